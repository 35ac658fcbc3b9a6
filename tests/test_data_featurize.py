"""Featurizer: feature layout, pair edges and invalid input (needs RDKit)."""
import numpy as np
import pytest
import torch

from graphsam_ext.data import ATOM_FEATURE_DIM, BOND_FEATURE_DIM, Featurizer, Graph
from graphsam_ext.data.graph import ATOM_FLAGS, ATOM_ONE_HOT, ATOM_SCALARS, BOND_FLAGS, BOND_ONE_HOT

Chem = pytest.importorskip("rdkit.Chem")


def _columns():
    """{(block, value): column} for one-hot blocks and {flag: column}, rebuilt from the layout."""
    columns, offset = {}, 0
    for block, choices in ATOM_ONE_HOT:
        for i, value in enumerate(choices):
            columns[(block, value)] = offset + i
        columns[(block, "other")] = offset + len(choices)
        offset += len(choices) + 1
    for name in ATOM_FLAGS:
        columns[name] = offset
        offset += 1
    for name in ATOM_SCALARS:
        columns[name] = offset
        offset += 1
    return columns


COL = _columns()


def test_dimensions_match_the_documented_layout():
    assert ATOM_FEATURE_DIM == 146 == len(COL) == max(COL.values()) + 1
    assert BOND_FEATURE_DIM == 14 == sum(len(c) + 1 for _, c in BOND_ONE_HOT) + len(BOND_FLAGS)
    f = Featurizer()
    assert (f.atom_dim, f.edge_dim, f.distance_bins) == (146, 14, 0)
    assert Featurizer(pair_distance=3).edge_dim == 14 + 1 + 3 + 1
    assert Featurizer(pair_distance="all").edge_dim == 14 + 1 + 10 + 1
    assert Featurizer(pair_distance="all", max_distance_bins=4).distance_bins == 4
    assert Featurizer(pair_distance=0).pair_distance is None


def test_ethanol_graph_has_both_edge_directions_and_expected_atoms():
    g = Featurizer()("CCO")
    assert isinstance(g, Graph)
    assert g.x.dtype == torch.float32 and g.x.shape == (3, ATOM_FEATURE_DIM)
    assert g.edge_index.dtype == torch.int64 and g.edge_attr.dtype == torch.float32
    assert sorted(map(tuple, g.edge_index.t().tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert g.edge_attr.shape == (4, BOND_FEATURE_DIM)
    # Atomic number one-hot: C, C, O.
    assert g.x[0, COL[("atomic_num", 6)]] == 1 and g.x[2, COL[("atomic_num", 8)]] == 1
    assert g.x[:, COL[("atomic_num", 6)]].tolist() == [1, 1, 0]
    # Implicit hydrogens: CH3, CH2, OH.
    assert [int(g.x[i, COL[("total_num_hs", h)]]) for i, h in enumerate((3, 2, 1))] == [1, 1, 1]
    assert g.x[1, COL[("degree", 2)]] == 1
    assert g.x[:, COL[("hybridization", "SP3")]].tolist() == [1, 1, 1]
    # Each block is one-hot: exactly one active column per atom per categorical block.
    offset = 0
    for _, choices in ATOM_ONE_HOT:
        assert torch.all(g.x[:, offset:offset + len(choices) + 1].sum(1) == 1)
        offset += len(choices) + 1
    # Single, non-conjugated, acyclic bonds; both directions of a bond carry the same features.
    assert torch.all(g.edge_attr[:, 0] == 1) and torch.all(g.edge_attr[:, -2:] == 0)
    assert torch.equal(g.edge_attr[0::2], g.edge_attr[1::2])


def test_aromatic_ring_charge_stereo_and_unknown_atoms():
    f = Featurizer()
    benzene = f("c1ccccc1")
    assert torch.all(benzene.x[:, COL["is_aromatic"]] == 1)
    assert torch.all(benzene.x[:, COL["in_ring_6"]] == 1) and torch.all(benzene.x[:, COL["in_ring_5"]] == 0)
    assert torch.all(benzene.edge_attr[:, 3] == 1)  # aromatic bond type
    assert torch.all(benzene.edge_attr[:, -1] == 1)  # in ring

    ammonium = f("[NH4+]")
    assert ammonium.x[0, COL[("formal_charge", 1)]] == 1 and ammonium.x[0, COL[("total_num_hs", 4)]] == 1

    alanine = f("C[C@H](N)C(=O)O")  # L-alanine: the alpha carbon is S
    assert alanine.x[1, COL["cip_S"]] == 1 and alanine.x[1, COL["cip_R"]] == 0
    assert alanine.x[1, COL[("chiral_tag", "CHI_TETRAHEDRAL_CCW")]] == 1
    assert alanine.x[:, COL["cip_S"]].sum() == 1

    butene = f("C/C=C/C")
    stereo_offset = 5  # after the 5 bond-type columns
    double = butene.edge_attr[:, 1] == 1
    assert torch.all(butene.edge_attr[double, stereo_offset + 3] == 1)  # STEREOE

    dummy = f("*C")  # atomic number 0 (clintox has such atoms) -> the "other" slot, not an error
    assert dummy.x[0, COL[("atomic_num", "other")]] == 1


def test_gasteiger_charges_are_finite_and_clipped():
    for smiles in ("CC(=O)[O-].[Na+]", "O=[Fe]", "C[Si](C)(C)C", "OCC3OC(OCC2OC(OC(C#N)c1ccccc1)C(O)C(O)C2O)C(O)C(O)C3O"):
        g = Featurizer()(smiles)
        charges = g.x[:, [COL["gasteiger_charge"], COL["gasteiger_h_charge"]]]
        assert torch.isfinite(charges).all() and charges.abs().max() <= 1.0
    water = Featurizer()("O")
    assert water.x[0, COL["gasteiger_charge"]] < 0


def test_invalid_smiles_give_none_and_whitespace_is_ignored(capfd):
    f = Featurizer()
    for bad in ("not a smiles", "C1CC", "", "   ", "[Al](C)(C)(C)(C)(C)C", None):
        assert f(bad) is None
    assert f("  CCO ").num_nodes == 3
    # RDKit's parse errors must not leak to the terminal: the library does not print.
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_single_atom_molecule_has_no_edges():
    g = Featurizer()("[Na+]")
    assert g.num_nodes == 1 and g.edge_index.shape == (2, 0) and g.edge_attr.shape == (0, BOND_FEATURE_DIM)
    g = Featurizer(pair_distance="all")("[Na+]")
    assert g.edge_index.shape == (2, 0) and g.edge_attr.shape == (0, Featurizer(pair_distance="all").edge_dim)


@pytest.mark.parametrize("k", [1, 2, 3, "all"])
def test_pair_edges_match_rdkit_distance_matrix(k):
    smiles = "CC(C)c1ccccc1O.[Cl-]"
    f = Featurizer(pair_distance=k, max_distance_bins=4)
    g = f(smiles)
    mol = Chem.MolFromSmiles(smiles)
    dist = Chem.GetDistanceMatrix(mol)
    n = mol.GetNumAtoms()
    expected = {
        (i, j) for i in range(n) for j in range(n)
        if i != j and (k == "all" or dist[i, j] <= k)
    }
    pairs = list(map(tuple, g.edge_index.t().tolist()))
    assert len(pairs) == len(set(pairs)) and set(pairs) == expected
    bonded = {(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()}
    bonded |= {(j, i) for i, j in bonded}
    bond_graph = Featurizer()(smiles)
    bond_attr = {p: bond_graph.edge_attr[e] for e, p in enumerate(map(tuple, bond_graph.edge_index.t().tolist()))}
    bins = f.distance_bins
    for e, (i, j) in enumerate(pairs):
        row = g.edge_attr[e]
        is_bond = (i, j) in bonded
        assert row[BOND_FEATURE_DIM] == float(is_bond)
        if is_bond:
            assert torch.equal(row[:BOND_FEATURE_DIM], bond_attr[(i, j)])
        else:
            assert torch.all(row[:BOND_FEATURE_DIM] == 0)
        block = row[BOND_FEATURE_DIM + 1:]
        assert block.sum() == 1
        if dist[i, j] < n:
            assert block[min(int(dist[i, j]), bins) - 1] == 1
        else:
            assert block[-1] == 1  # the chloride is a separate fragment
    assert g.edge_attr.shape == (len(pairs), f.edge_dim)


@pytest.mark.parametrize("bad", [-1, 1.5, "some", True, [2]])
def test_bad_pair_distance_is_rejected_with_the_argument_name(bad):
    with pytest.raises((ValueError, TypeError), match="pair_distance"):
        Featurizer(pair_distance=bad)


def test_config_round_trip_and_version_check():
    f = Featurizer(pair_distance=3)
    cfg = f.config()
    assert cfg["atom_dim"] == 146 and cfg["edge_dim"] == 19 and cfg["pair_distance"] == 3
    assert Featurizer.from_config(cfg).config() == cfg
    with pytest.raises(ValueError, match="version"):
        Featurizer.from_config({**cfg, "version": cfg["version"] + 1})


def test_x_is_float32_and_rows_are_not_all_zero_on_a_drug():
    g = Featurizer()("CC(=O)Oc1ccccc1C(=O)O")  # aspirin
    assert g.x.shape == (13, 146) and np.all(g.x.sum(1).numpy() > 0)
    assert g.edge_index.max() < g.num_nodes
