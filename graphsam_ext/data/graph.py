"""The featurized molecule (``Graph``) and the layout of the default atom and bond features.

The layout lives here, in plain Python, so that ``ATOM_FEATURE_DIM`` and ``BOND_FEATURE_DIM``
are known without importing RDKit. ``docs/data.md`` describes every block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Categorical atom features, one-hot encoded, each with a trailing "other" slot so that an
# unexpected value (a metal's degree 8, a dummy atom "*" with atomic number 0) still gets a
# well-defined encoding instead of an error.
ATOM_ONE_HOT = (
    ("atomic_num", tuple(range(1, 101))),
    ("degree", (0, 1, 2, 3, 4, 5)),
    ("formal_charge", (-2, -1, 0, 1, 2)),
    ("total_num_hs", (0, 1, 2, 3, 4)),
    ("hybridization", ("S", "SP", "SP2", "SP3", "SP3D", "SP3D2")),
    ("chiral_tag", ("CHI_UNSPECIFIED", "CHI_TETRAHEDRAL_CW", "CHI_TETRAHEDRAL_CCW")),
)
# Binary atom flags, no "other" slot.
ATOM_FLAGS = (
    "cip_R",
    "cip_S",
    "is_aromatic",
    "is_in_ring",
    "in_ring_3",
    "in_ring_4",
    "in_ring_5",
    "in_ring_6",
    "in_ring_7",
    "in_ring_8",
    "has_radical",
)
# Real-valued atom features, scaled to roughly unit range.
ATOM_SCALARS = (
    "mass_over_100",
    "total_valence_over_8",
    "gasteiger_charge",
    "gasteiger_h_charge",
)

BOND_ONE_HOT = (
    ("bond_type", ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")),
    ("stereo", ("STEREONONE", "STEREOANY", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS")),
)
BOND_FLAGS = ("is_conjugated", "is_in_ring")

# Molecule-level RDKit descriptors (``Featurizer(descriptors=True)``), each divided by a fixed
# scale so that drug-like values are of order one, then clipped to [-DESCRIPTOR_CLIP, DESCRIPTOR_CLIP].
# Fixed scales, not statistics of a training split: a checkpoint's features never depend on data.
MOL_DESCRIPTORS = (
    ("crippen_logp", 5.0),
    ("crippen_mr", 100.0),
    ("tpsa", 100.0),
    ("mol_weight", 500.0),
    ("heavy_atoms", 50.0),
    ("h_donors", 5.0),
    ("h_acceptors", 10.0),
    ("rotatable_bonds", 10.0),
    ("rings", 5.0),
    ("aromatic_rings", 5.0),
    ("heteroatoms", 10.0),
    ("fraction_csp3", 1.0),
    ("labute_asa", 200.0),
    ("formal_charge", 2.0),
)
MOL_DESCRIPTOR_DIM = len(MOL_DESCRIPTORS)
DESCRIPTOR_CLIP = 5.0


def _one_hot_width(blocks) -> int:
    return sum(len(choices) + 1 for _, choices in blocks)


ATOM_FEATURE_DIM = _one_hot_width(ATOM_ONE_HOT) + len(ATOM_FLAGS) + len(ATOM_SCALARS)
BOND_FEATURE_DIM = _one_hot_width(BOND_ONE_HOT) + len(BOND_FLAGS)


@dataclass
class Graph:
    """One molecule as a directed graph; every bond appears once in each direction.

    x:          (num_atoms, atom_dim) float32 atom features
    edge_index: (2, num_edges) int64; row 0 = source atom, row 1 = destination atom
    edge_attr:  (num_edges, edge_dim) float32 edge features (see ``Featurizer.edge_dim``)
    mol_features: (MOL_DESCRIPTOR_DIM,) float32 molecule descriptors, or None (featurized without)
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    mol_features: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])
