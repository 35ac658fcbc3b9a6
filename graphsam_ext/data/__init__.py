"""Molecular data: SMILES -> Graph (RDKit), datasets, splits and CSR batching.

Importing this package does not import RDKit; RDKit is loaded the first time a SMILES string is
parsed (see ``_rdkit.py``). See docs/data.md for the feature layout, datasets, splits and cache.
"""
from graphsam_ext.data.batch import BatchGraph, MoleculeItem, collate, make_loader
from graphsam_ext.data.datasets import TASK_TYPES, MoleculeDataset, load_dataset
from graphsam_ext.data.featurize import Featurizer, parse_smiles
from graphsam_ext.data.graph import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, Graph
from graphsam_ext.data.sources import DATA_DIR_ENV, DATASET_NAMES, DATASETS, default_cache_dir
from graphsam_ext.data.splits import SPLIT_KINDS, load_split, save_split, scaffold_of, split_indices

__all__ = [
    "ATOM_FEATURE_DIM",
    "BOND_FEATURE_DIM",
    "BatchGraph",
    "DATASETS",
    "DATASET_NAMES",
    "DATA_DIR_ENV",
    "Featurizer",
    "Graph",
    "MoleculeDataset",
    "MoleculeItem",
    "SPLIT_KINDS",
    "TASK_TYPES",
    "collate",
    "default_cache_dir",
    "load_dataset",
    "load_split",
    "make_loader",
    "parse_smiles",
    "save_split",
    "scaffold_of",
    "split_indices",
]
