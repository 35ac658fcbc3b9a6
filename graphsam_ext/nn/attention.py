"""Multi-head graph attention with the parameters and outputs of PyG's ``TransformerConv``."""
from __future__ import annotations

from torch import Tensor, nn

from graphsam_ext.ops.graph_attention import build_csr, graph_attention


class GraphAttention(nn.Module):
    r"""Graph transformer convolution (Shi et al., 2021), computed by the fused attention op.

    For node ``i`` with incoming edges ``e = (j -> i)``, heads ``h`` and ``C = out_channels``::

        q_i = W_q x_i,  k_j = W_k x_j,  v_j = W_v x_j,  ek_e = W_e edge_attr_e   (each (heads, C))
        alpha_e = softmax_{e into i}( <q_i, k_j + ek_e> / sqrt(C) )
        out_i = concat_h( sum_e alpha_e (v_j + ek_e) ) + W_skip x_i              (heads * C)

    Parameter names (``lin_query``, ``lin_key``, ``lin_value``, ``lin_edge``, ``lin_skip``) and
    shapes match ``torch_geometric.nn.TransformerConv(in_channels, out_channels, heads,
    concat=True, beta=False, edge_dim=edge_dim, bias=bias, root_weight=root_weight)``, so its
    ``state_dict`` loads here and gives the same outputs. Attention dropout is not supported
    (PyG's default ``dropout=0``); apply dropout to the output instead. With
    ``root_weight=False`` the layer has no ``lin_skip`` and ignores PyG's unused one on load.

    Args:
        in_channels: node feature width.
        out_channels: width per head; heads are concatenated.
        heads: number of attention heads.
        edge_dim: edge feature width, or None for attention without edge features.
        root_weight: add ``lin_skip(x)`` to the output.
        bias: learn additive biases in the query / key / value / skip projections.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, edge_dim: int | None = None,
                 root_weight: bool = True, bias: bool = True):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("heads", heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GraphAttention: {name} must be a positive integer, got {value!r}")
        if edge_dim is not None and (not isinstance(edge_dim, int) or edge_dim < 1):
            raise ValueError(f"GraphAttention: edge_dim must be a positive integer or None, got {edge_dim!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.edge_dim = edge_dim
        self.root_weight = root_weight
        width = heads * out_channels
        self.lin_query = nn.Linear(in_channels, width, bias=bias)
        self.lin_key = nn.Linear(in_channels, width, bias=bias)
        self.lin_value = nn.Linear(in_channels, width, bias=bias)
        self.lin_edge = nn.Linear(edge_dim, width, bias=False) if edge_dim is not None else None
        self.lin_skip = nn.Linear(in_channels, width, bias=bias) if root_weight else None
        if not root_weight:
            self.register_load_state_dict_pre_hook(_drop_unused_skip)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                csr: tuple[Tensor, Tensor, Tensor | None] | None = None) -> Tensor:
        """x: (num_nodes, in_channels); edge_index: (2, num_edges), row 0 source, row 1
        destination, any order; edge_attr: (num_edges, edge_dim) in edge_index's order.
        csr: optional ``(rowptr, col, perm)`` from :func:`graphsam_ext.ops.build_csr` for this
        edge_index, to skip the sort (``perm`` None means edge_attr is already in CSR order).
        Returns (num_nodes, heads * out_channels)."""
        if csr is None:
            rowptr, col, perm = build_csr(edge_index, x.shape[0])
        else:
            rowptr, col, perm = csr
        if edge_attr is not None and perm is not None:
            edge_attr = edge_attr.index_select(0, perm)
        return self.forward_csr(x, rowptr, col, edge_attr)

    def forward_csr(self, x: Tensor, rowptr: Tensor, col: Tensor, edge_attr: Tensor | None = None,
                    bias: Tensor | None = None) -> Tensor:
        """The same on a prebuilt CSR: rowptr (num_nodes + 1,), col (num_edges,); edge_attr
        (num_edges, edge_dim) and bias (num_edges, heads, added to the scores) in CSR order."""
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"GraphAttention: x must be (num_nodes, {self.in_channels}), got {tuple(x.shape)}")
        num_nodes, heads, channels = x.shape[0], self.heads, self.out_channels
        q = self.lin_query(x).view(num_nodes, heads, channels)
        k = self.lin_key(x).view(num_nodes, heads, channels)
        v = self.lin_value(x).view(num_nodes, heads, channels)
        edge = None
        if self.lin_edge is not None:
            if edge_attr is None:
                raise ValueError(f"GraphAttention: built with edge_dim={self.edge_dim}, so edge_attr "
                                 f"(num_edges, {self.edge_dim}) is required")
            edge = self.lin_edge(edge_attr).view(-1, heads, channels)
        elif edge_attr is not None:
            raise ValueError("GraphAttention: got edge_attr but the layer was built with edge_dim=None; "
                             "pass edge_dim to use edge features")
        out = graph_attention(q, k, v, rowptr, col, edge, bias, channels ** -0.5)
        out = out.reshape(num_nodes, heads * channels)
        if self.lin_skip is not None:
            out = out + self.lin_skip(x)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, heads={self.heads}, edge_dim={self.edge_dim}, "
                f"root_weight={self.root_weight}")


def _drop_unused_skip(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs):
    """PyG's TransformerConv keeps lin_skip even with root_weight=False; it is never used."""
    for key in [k for k in state_dict if k.startswith(prefix + "lin_skip.")]:
        del state_dict[key]
