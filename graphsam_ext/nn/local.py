"""Local bond message passing with sum aggregation, the local half of a GraphGPS-style layer."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class BondMessagePassing(nn.Module):
    r"""GINE-style message passing over the bonds (Hu et al., 2020; the local block of GraphGPS)::

        m_i = sum_{e = (j -> i)} GELU(x_j + W_e edge_attr_e)
        out_i = MLP((1 + eps) x_i + m_i)               MLP = Linear, GELU, Linear

    Softmax attention averages over the neighbours, so it cannot count them; the sum here can
    (how many halogens, how many aromatic neighbours), which additive properties such as
    lipophilicity depend on. The messages are one (num_bonds, hidden) tensor, so run it over the
    bonds only, never over all atom pairs.

    Args:
        hidden: node feature width (input and output).
        edge_dim: width of ``edge_attr``.
    """

    def __init__(self, hidden: int, edge_dim: int):
        super().__init__()
        for name, value in (("hidden", hidden), ("edge_dim", edge_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BondMessagePassing: {name} must be a positive integer, got {value!r}")
        self.lin_edge = nn.Linear(edge_dim, hidden)
        self.eps = nn.Parameter(torch.zeros(1))
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, x: Tensor, dst: Tensor, src: Tensor, edge_attr: Tensor) -> Tensor:
        """x: (num_nodes, hidden); dst, src: (num_bonds,) destination and source node of each
        directed bond; edge_attr: (num_bonds, edge_dim). Returns (num_nodes, hidden)."""
        messages = nn.functional.gelu(x.index_select(0, src) + self.lin_edge(edge_attr))
        summed = torch.zeros_like(x).index_add_(0, dst, messages)
        return self.mlp((1 + self.eps) * x + summed)
