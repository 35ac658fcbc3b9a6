"""Pre-norm graph transformer layer over a prebuilt CSR batch."""
from __future__ import annotations

from torch import Tensor, nn

from graphsam_ext.nn.attention import GraphAttention


class GraphTransformerLayer(nn.Module):
    r"""Pre-norm transformer block whose attention runs over the edges of a graph::

        h   = x + Dropout(W_o GraphAttention(LayerNorm(x), edges, edge_attr, bias))
        out = h + Dropout(W_2 Dropout(GELU(W_1 LayerNorm(h))))

    ``GraphAttention`` has ``heads`` heads of width ``hidden // heads`` and no skip projection
    (the residual plays that role). The graph comes as CSR over destination nodes, built once
    per batch (by the collate function or :func:`graphsam_ext.ops.build_csr`), so no sorting
    happens per layer or per step.

    Args:
        hidden: node feature width (divisible by ``heads``).
        heads: attention heads.
        edge_dim: width of ``edge_attr``, or None for attention without edge features.
        dropout: dropout on the attention output and in the feed-forward block.
        ffn_multiplier: feed-forward hidden width over ``hidden``.
    """

    def __init__(self, hidden: int, heads: int, edge_dim: int | None = None, dropout: float = 0.1,
                 ffn_multiplier: int = 2):
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
            nn.Dropout(dropout),
            nn.Linear(ffn_multiplier * hidden, hidden),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, rowptr: Tensor, col: Tensor, edge_attr: Tensor | None = None,
                bias: Tensor | None = None) -> Tensor:
        """x: (num_nodes, hidden); rowptr: (num_nodes + 1,); col: (num_edges,) source nodes;
        edge_attr: (num_edges, edge_dim) and bias: (num_edges, heads) score bias, both already
        in CSR order. Returns (num_nodes, hidden)."""
        a = self.attn.forward_csr(self.norm_attn(x), rowptr, col, edge_attr, bias)
        h = x + self.dropout(self.attn_out(a))
        return h + self.dropout(self.ffn(self.norm_ffn(h)))
