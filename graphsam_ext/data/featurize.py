"""SMILES -> ``Graph`` with the default atom and bond features (layout in ``graph.py``).

Atom features (``ATOM_FEATURE_DIM`` = 146): one-hot atomic number 1-100, degree 0-5, formal
charge -2..2, total hydrogens 0-4, hybridization S..SP3D2, chiral tag (each with an "other"
slot); flags for CIP R/S, aromatic, in ring, in ring of size 3..8, radical; scalars
mass/100, total valence/8, Gasteiger charge and Gasteiger hydrogen charge.
Bond features (``BOND_FEATURE_DIM`` = 14): one-hot type (single, double, triple, aromatic,
other), stereo (none, any, Z, E, cis, trans, other); flags conjugated, in ring.

Optional pair edges (``pair_distance``): every ordered pair of distinct atoms whose topological
distance is at most K (or every pair, ``"all"``) becomes an edge. Their features are
``[bond features | is_bond | one-hot distance 1..bins | disconnected]`` where bond features are
zeros for pairs that are not bonded, ``bins = K`` for an integer K and ``max_distance_bins``
for ``"all"`` (its last bin then means "at least that far"), and ``disconnected`` marks atoms
in different fragments of a salt or mixture (no path between them).

Optional molecule descriptors (``descriptors=True``): the ``MOL_DESCRIPTORS`` of ``graph.py``
(Crippen logP and molar refractivity, TPSA, weight, counts of atoms, donors, acceptors, rotatable
bonds, rings, heteroatoms, fraction sp3, Labute ASA, net charge), each over a fixed scale and
clipped; the model concatenates them to the pooled graph vector before its head (chemprop's
``--features-generators`` idea, with a small set that costs little to compute).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from graphsam_ext.errors import UserError
from graphsam_ext.data._rdkit import rdkit_modules
from graphsam_ext.data.graph import (
    ATOM_FEATURE_DIM,
    ATOM_FLAGS,
    ATOM_ONE_HOT,
    ATOM_SCALARS,
    BOND_FEATURE_DIM,
    BOND_FLAGS,
    BOND_ONE_HOT,
    DESCRIPTOR_CLIP,
    MOL_DESCRIPTOR_DIM,
    MOL_DESCRIPTORS,
    Graph,
)

FEATURIZER_NAME = "graphsam-default"
# Bump when the meaning of any feature column changes: it is part of every cache key.
FEATURIZER_VERSION = 1
# Gasteiger charges of organic atoms lie well inside [-1, 1]; metals and hypervalent atoms can
# give huge or NaN values that would dominate a layer's input, so they are clipped / zeroed.
_CHARGE_CLIP = 1.0


def _block_lookup(blocks):
    """Per block: (offset of the block, {value: column}, column of the "other" slot)."""
    lookups, offset = [], 0
    for _, choices in blocks:
        table = {value: offset + i for i, value in enumerate(choices)}
        lookups.append((table, offset + len(choices)))
        offset += len(choices) + 1
    return lookups, offset


_ATOM_LOOKUP, _ATOM_FLAG_OFFSET = _block_lookup(ATOM_ONE_HOT)
_ATOM_SCALAR_OFFSET = _ATOM_FLAG_OFFSET + len(ATOM_FLAGS)
_BOND_LOOKUP, _BOND_FLAG_OFFSET = _block_lookup(BOND_ONE_HOT)
_ENUM_LOOKUPS = {}


def _enum_lookups():
    """The name-keyed lookups of RDKit enum features re-keyed by the enum's integer value.

    Converting an RDKit enum to ``str`` costs more than the rest of an atom's features, so the
    per-atom loops use ``int(enum)``; built on first use because it needs RDKit.
    """
    if not _ENUM_LOOKUPS:
        chem = rdkit_modules().Chem

        def by_value(lookup, enum):
            table, other = lookup
            return {int(enum.names[name]): column for name, column in table.items()}, other

        _ENUM_LOOKUPS.update(
            hybridization=by_value(_ATOM_LOOKUP[4], chem.HybridizationType),
            chiral_tag=by_value(_ATOM_LOOKUP[5], chem.ChiralType),
            bond_type=by_value(_BOND_LOOKUP[0], chem.BondType),
            stereo=by_value(_BOND_LOOKUP[1], chem.BondStereo),
        )
    return _ENUM_LOOKUPS
_RING_SIZES = (3, 4, 5, 6, 7, 8)
_FLAG_COLUMN = {name: _ATOM_FLAG_OFFSET + i for i, name in enumerate(ATOM_FLAGS)}
assert _ATOM_SCALAR_OFFSET + len(ATOM_SCALARS) == ATOM_FEATURE_DIM
assert _BOND_FLAG_OFFSET + len(BOND_FLAGS) == BOND_FEATURE_DIM


def _check_pair_distance(pair_distance):
    """None (bonds only), a positive int K, or "all"; anything else is a ValueError."""
    if pair_distance is None or isinstance(pair_distance, str) and pair_distance == "all":
        return pair_distance
    if isinstance(pair_distance, numbers.Integral) and not isinstance(pair_distance, bool) and pair_distance >= 0:
        return int(pair_distance) or None
    raise UserError(
        f"pair_distance must be None or 0 (bonds only), a positive integer K (atom pairs within "
        f"K bonds) or 'all' (every atom pair); got {pair_distance!r}"
    )


class Featurizer:
    """SMILES -> ``Graph`` with the default features (see the module docstring).

    pair_distance: None / 0 for bond edges only; K >= 1 for edges between atoms at most K bonds
        apart; "all" for every atom pair of the molecule.
    max_distance_bins: number of distance bins for ``pair_distance="all"``.
    descriptors: also compute the molecule descriptors (``Graph.mol_features``).
    """

    def __init__(self, pair_distance=None, max_distance_bins: int = 10, descriptors: bool = False):
        self.pair_distance = _check_pair_distance(pair_distance)
        if not isinstance(descriptors, bool):
            raise UserError(f"descriptors must be True or False, got {descriptors!r}")
        self.descriptors = descriptors
        if not isinstance(max_distance_bins, numbers.Integral) or isinstance(max_distance_bins, bool) or max_distance_bins < 1:
            raise UserError(f"max_distance_bins must be a positive integer, got {max_distance_bins!r}")
        self.max_distance_bins = int(max_distance_bins)

    @property
    def atom_dim(self) -> int:
        return ATOM_FEATURE_DIM

    @property
    def distance_bins(self) -> int:
        """Width of the one-hot distance block of pair edges (0 without pair edges)."""
        if self.pair_distance is None:
            return 0
        return self.pair_distance if isinstance(self.pair_distance, int) else self.max_distance_bins

    @property
    def mol_dim(self) -> int:
        """Width of ``Graph.mol_features`` (0 without descriptors)."""
        return MOL_DESCRIPTOR_DIM if self.descriptors else 0

    @property
    def edge_dim(self) -> int:
        if self.pair_distance is None:
            return BOND_FEATURE_DIM
        return BOND_FEATURE_DIM + 1 + self.distance_bins + 1

    def config(self) -> dict:
        """Everything that determines the features: stored in cache keys and checkpoints."""
        return {
            "name": FEATURIZER_NAME,
            "version": FEATURIZER_VERSION,
            "atom_dim": self.atom_dim,
            "edge_dim": self.edge_dim,
            "pair_distance": self.pair_distance,
            "max_distance_bins": self.max_distance_bins,
            "descriptors": self.descriptors,
            "mol_dim": self.mol_dim,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Featurizer":
        """Rebuild the featurizer a checkpoint was trained with; refuses other feature sets."""
        if config.get("name") != FEATURIZER_NAME or config.get("version") != FEATURIZER_VERSION:
            raise UserError(
                f"config describes featurizer {config.get('name')!r} version {config.get('version')!r}, "
                f"but this installation has {FEATURIZER_NAME!r} version {FEATURIZER_VERSION}: "
                "re-featurize with a matching graphsam-ext version"
            )
        return cls(pair_distance=config.get("pair_distance"), max_distance_bins=config.get("max_distance_bins", 10),
                   descriptors=bool(config.get("descriptors", False)))

    def __repr__(self) -> str:
        return (f"Featurizer(pair_distance={self.pair_distance!r}, max_distance_bins={self.max_distance_bins}, "
                f"descriptors={self.descriptors})")

    def __call__(self, smiles: str) -> Graph | None:
        """The graph of ``smiles``, or None when RDKit cannot parse or sanitize it."""
        mol, _ = parse_smiles(smiles)
        return None if mol is None else self.featurize_mol(mol)

    def featurize_mol(self, mol) -> Graph:
        """The graph of an RDKit molecule (hydrogens stay implicit, as RDKit parsed them)."""
        x = atom_features(mol)
        bond_src, bond_dst, bond_attr = _bond_arrays(mol)
        if self.pair_distance is None:
            # Each bond k becomes edges 2k (begin -> end) and 2k + 1 (end -> begin).
            edge_index = np.stack(
                [np.stack([bond_src, bond_dst], 1).reshape(-1), np.stack([bond_dst, bond_src], 1).reshape(-1)]
            )
            edge_attr = np.repeat(bond_attr, 2, axis=0)
        else:
            edge_index, edge_attr = self._pair_edges(mol, bond_src, bond_dst, bond_attr)
        return Graph(
            x=torch.from_numpy(x),
            edge_index=torch.from_numpy(edge_index.astype(np.int64, copy=False)).reshape(2, -1),
            edge_attr=torch.from_numpy(np.ascontiguousarray(edge_attr, dtype=np.float32)).reshape(-1, self.edge_dim),
            mol_features=torch.from_numpy(mol_descriptors(mol)) if self.descriptors else None,
        )

    def _pair_edges(self, mol, bond_src, bond_dst, bond_attr):
        rd = rdkit_modules()
        n = mol.GetNumAtoms()
        dist = rd.Chem.GetDistanceMatrix(mol)
        # RDKit reports 1e8 between atoms of different fragments; any real path is < n bonds.
        connected = dist < n
        keep = ~np.eye(n, dtype=bool)
        if isinstance(self.pair_distance, int):
            keep &= connected & (dist <= self.pair_distance)
        src, dst = np.nonzero(keep)
        bond_id = np.full((n, n), -1, dtype=np.int64)
        bond_id[bond_src, bond_dst] = np.arange(len(bond_src))
        bond_id[bond_dst, bond_src] = np.arange(len(bond_src))
        pair_bond = bond_id[src, dst]
        is_bond = pair_bond >= 0

        bins = self.distance_bins
        attr = np.zeros((len(src), self.edge_dim), dtype=np.float32)
        attr[is_bond, :BOND_FEATURE_DIM] = bond_attr[pair_bond[is_bond]]
        attr[:, BOND_FEATURE_DIM] = is_bond
        pair_connected = connected[src, dst]
        d = np.minimum(dist[src, dst][pair_connected], bins).astype(np.int64)
        attr[np.nonzero(pair_connected)[0], BOND_FEATURE_DIM + d] = 1.0
        attr[~pair_connected, BOND_FEATURE_DIM + 1 + bins] = 1.0
        return np.stack([src, dst]), attr


def mol_descriptors(mol) -> np.ndarray:
    """(MOL_DESCRIPTOR_DIM,) float32 scaled, clipped descriptors of an RDKit molecule (graph.py)."""
    rd = rdkit_modules()
    desc, rdm = rd.Descriptors, rd.rdMolDescriptors
    raw = {
        "crippen_logp": rd.Crippen.MolLogP(mol),
        "crippen_mr": rd.Crippen.MolMR(mol),
        "tpsa": rdm.CalcTPSA(mol),
        "mol_weight": desc.MolWt(mol),
        "heavy_atoms": mol.GetNumHeavyAtoms(),
        "h_donors": rdm.CalcNumHBD(mol),
        "h_acceptors": rdm.CalcNumHBA(mol),
        "rotatable_bonds": rdm.CalcNumRotatableBonds(mol),
        "rings": rdm.CalcNumRings(mol),
        "aromatic_rings": rdm.CalcNumAromaticRings(mol),
        "heteroatoms": rdm.CalcNumHeteroatoms(mol),
        "fraction_csp3": rdm.CalcFractionCSP3(mol),
        "labute_asa": rdm.CalcLabuteASA(mol),
        "formal_charge": sum(a.GetFormalCharge() for a in mol.GetAtoms()),
    }
    values = np.array([raw[name] / scale for name, scale in MOL_DESCRIPTORS], dtype=np.float64)
    return np.clip(np.nan_to_num(values, nan=0.0, posinf=DESCRIPTOR_CLIP, neginf=-DESCRIPTOR_CLIP),
                   -DESCRIPTOR_CLIP, DESCRIPTOR_CLIP).astype(np.float32)


def parse_smiles(smiles) -> tuple:
    """(RDKit molecule, None) or (None, reason) for a SMILES string; RDKit's log stays quiet.

    Surrounding whitespace is ignored (some MoleculeNet files have trailing spaces); an empty
    string or a molecule without atoms counts as invalid.
    """
    rd = rdkit_modules()
    text = smiles.strip() if isinstance(smiles, str) else ""
    if not text:
        return None, "empty SMILES"
    # The library must not print; RDKit writes parse errors to stderr unless blocked.
    with rd.rdBase.BlockLogs():
        mol = rd.Chem.MolFromSmiles(text)
        if mol is None:
            return None, _failure_reason(rd, text)
    if mol.GetNumAtoms() == 0:
        return None, "no atoms"
    return mol, None


def _failure_reason(rd, text: str) -> str:
    """Why RDKit rejected ``text``: a syntax error or the sanitization message."""
    raw = rd.Chem.MolFromSmiles(text, sanitize=False)
    if raw is None:
        return "SMILES syntax error"
    try:
        rd.Chem.SanitizeMol(raw)
    except Exception as exc:  # RDKit raises several exception types for sanitization failures
        return str(exc).strip() or type(exc).__name__
    return "rejected by RDKit"


def atom_features(mol) -> np.ndarray:
    """(num_atoms, ATOM_FEATURE_DIM) float32 default atom features of an RDKit molecule."""
    rd = rdkit_modules()
    rd.rdPartialCharges.ComputeGasteigerCharges(mol, throwOnParamFailure=False)
    ring_info = mol.GetRingInfo()
    enums = _enum_lookups()
    atom_lookup = (*_ATOM_LOOKUP[:4], enums["hybridization"], enums["chiral_tag"])
    n = mol.GetNumAtoms()
    x = np.zeros((n, ATOM_FEATURE_DIM), dtype=np.float32)
    rows, cols, scalars = [], [], []
    for i in range(n):
        atom = mol.GetAtomWithIdx(i)
        values = (
            atom.GetAtomicNum(),
            atom.GetDegree(),
            atom.GetFormalCharge(),
            atom.GetTotalNumHs(),
            int(atom.GetHybridization()),
            int(atom.GetChiralTag()),
        )
        active = [table.get(value, other) for (table, other), value in zip(atom_lookup, values)]
        if atom.HasProp("_CIPCode"):
            code = atom.GetProp("_CIPCode")
            if code in ("R", "S"):
                active.append(_FLAG_COLUMN["cip_" + code])
        if atom.GetIsAromatic():
            active.append(_FLAG_COLUMN["is_aromatic"])
        if ring_info.NumAtomRings(i):
            active.append(_FLAG_COLUMN["is_in_ring"])
            for size in set(ring_info.AtomRingSizes(i)):
                if size in _RING_SIZES:
                    active.append(_FLAG_COLUMN[f"in_ring_{size}"])
        if atom.GetNumRadicalElectrons():
            active.append(_FLAG_COLUMN["has_radical"])
        rows.extend([i] * len(active))
        cols.extend(active)
        scalars.append(
            (
                atom.GetMass() / 100.0,
                atom.GetTotalValence() / 8.0,
                atom.GetDoubleProp("_GasteigerCharge"),
                atom.GetDoubleProp("_GasteigerHCharge"),
            )
        )
    x[rows, cols] = 1.0
    if n:
        block = np.asarray(scalars, dtype=np.float64)
        block[:, 2:] = np.clip(np.nan_to_num(block[:, 2:], nan=0.0, posinf=0.0, neginf=0.0), -_CHARGE_CLIP, _CHARGE_CLIP)
        x[:, _ATOM_SCALAR_OFFSET:] = block
    return x


def _bond_arrays(mol):
    """Begin atoms (B,), end atoms (B,) and (B, BOND_FEATURE_DIM) features of every bond."""
    num_bonds = mol.GetNumBonds()
    src = np.empty(num_bonds, dtype=np.int64)
    dst = np.empty(num_bonds, dtype=np.int64)
    attr = np.zeros((num_bonds, BOND_FEATURE_DIM), dtype=np.float32)
    enums = _enum_lookups()
    (type_table, type_other), (stereo_table, stereo_other) = enums["bond_type"], enums["stereo"]
    for k in range(num_bonds):
        bond = mol.GetBondWithIdx(k)
        src[k] = bond.GetBeginAtomIdx()
        dst[k] = bond.GetEndAtomIdx()
        attr[k, type_table.get(int(bond.GetBondType()), type_other)] = 1.0
        attr[k, stereo_table.get(int(bond.GetStereo()), stereo_other)] = 1.0
        if bond.GetIsConjugated():
            attr[k, _BOND_FLAG_OFFSET] = 1.0
        if bond.IsInRing():
            attr[k, _BOND_FLAG_OFFSET + 1] = 1.0
    return src, dst, attr
