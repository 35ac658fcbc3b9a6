"""Pre-norm graph transformer layer over a prebuilt CSR batch."""
from __future__ import annotations

from torch import Tensor, nn

from graphsam_ext.nn.attention import GraphAttention
from graphsam_ext.nn.dropout import ModelDropout
from graphsam_ext.nn.local import BondMessagePassing


class GraphTransformerLayer(nn.Module):
    r"""Pre-norm transformer block whose attention runs over the edges of a graph::

        h   = x + Dropout(W_o GraphAttention(LayerNorm(x), edges, edge_attr, bias))
              [ + Dropout(BondMessagePassing(LayerNorm(x), bonds)) ]      with local=True
        out = h + Dropout(W_2 Dropout(GELU(W_1 LayerNorm(h))))

    ``GraphAttention`` has ``heads`` heads of width ``hidden // heads`` and no skip projection
    (the residual plays that role). With ``local=True`` a sum-aggregating message passing over
    the bonds runs beside the attention and is added to the same residual, as in a GraphGPS
    layer (Rampasek et al., 2022); the attention's edges may then be the bonds or atom pairs.
    The graph comes as CSR over destination nodes, built once per batch (by the collate
    function or :func:`graphsam_ext.ops.build_csr`), so no sorting happens per layer or per step.

    Args:
        hidden: node feature width (divisible by ``heads``).
        heads: attention heads.
        edge_dim: width of ``edge_attr``, or None for attention without edge features.
        dropout: dropout on the attention output and in the feed-forward block.
        ffn_multiplier: feed-forward hidden width over ``hidden``.
        local: add the bond message-passing block (:class:`BondMessagePassing`).
    """

    def __init__(self, hidden: int, heads: int, edge_dim: int | None = None, dropout: float = 0.1,
                 ffn_multiplier: int = 2, local: bool = False):
        super().__init__()
        if not isinstance(hidden, int) or not isinstance(heads, int) or hidden < 1 or heads < 1 or hidden % heads:
            raise ValueError(f"GraphTransformerLayer: hidden ({hidden!r}) must be a positive multiple of heads "
                             f"({heads!r})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"GraphTransformerLayer: dropout must be in [0, 1), got {dropout}")
        if not isinstance(ffn_multiplier, int) or ffn_multiplier < 1:
            raise ValueError(f"GraphTransformerLayer: ffn_multiplier must be a positive integer, got {ffn_multiplier!r}")
        self.hidden = hidden
        self.heads = heads
        self.norm_attn = nn.LayerNorm(hidden)
        self.attn = GraphAttention(hidden, hidden // heads, heads=heads, edge_dim=edge_dim, root_weight=False)
        self.attn_out = nn.Linear(hidden, hidden)
        self.norm_ffn = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, ffn_multiplier * hidden),
            nn.GELU(),
            ModelDropout(dropout),
            nn.Linear(ffn_multiplier * hidden, hidden),
        )
        self.dropout = ModelDropout(dropout)
        if local and edge_dim is None:
            raise ValueError("GraphTransformerLayer: local=True needs edge_dim (the bond features' width)")
        self.local = BondMessagePassing(hidden, edge_dim) if local else None

    def forward(self, x: Tensor, rowptr: Tensor, col: Tensor, edge_attr: Tensor | None = None,
                bias: Tensor | None = None, bonds: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """x: (num_nodes, hidden); rowptr: (num_nodes + 1,); col: (num_edges,) source nodes;
        edge_attr: (num_edges, edge_dim) and bias: (num_edges, heads) score bias, both already
        in CSR order; bonds: ``(dst, src, bond_attr)`` of the directed bonds for the local block
        (required with ``local=True``). Returns (num_nodes, hidden)."""
        xn = self.norm_attn(x)
        a = self.attn.forward_csr(xn, rowptr, col, edge_attr, bias)
        h = x + self.dropout(self.attn_out(a))
        if self.local is not None:
            if bonds is None:
                raise ValueError("GraphTransformerLayer: built with local=True, so bonds=(dst, src, bond_attr) is "
                                 "required")
            h = h + self.dropout(self.local(xn, *bonds))
        return h + self.dropout(self.ffn(self.norm_ffn(h)))
