"""Splits: scaffold splits never share a scaffold; random and balanced splits follow their seed."""
import os
from pathlib import Path

import pytest

from graphsam_ext.data import load_dataset, load_split, save_split, split_indices

pytest.importorskip("rdkit")
from rdkit.Chem.Scaffolds import MurckoScaffold  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GRAPHSAM_DATA_DIR") or ROOT.parent / "shared" / "data" / "moleculenet")


@pytest.fixture(scope="module")
def bbbp(shared_cache):
    if not (DATA_DIR / "bbbp.csv").is_file():
        pytest.skip(f"MoleculeNet CSVs not found in {DATA_DIR}")
    return load_dataset("bbbp", data_dir=DATA_DIR, cache_dir=shared_cache)


def _check_partition(split, n):
    train, val, test = split
    everything = train + val + test
    assert sorted(everything) == list(range(n)), "each molecule must be in exactly one part"
    assert all(isinstance(i, int) for i in everything)


def _scaffolds(dataset, indices):
    # Computed here with RDKit directly, not with graphsam_ext's own scaffold helper.
    return {MurckoScaffold.MurckoScaffoldSmiles(smiles=dataset.smiles[i], includeChirality=False) for i in indices}


@pytest.mark.parametrize("kind", ["scaffold", "balanced_scaffold"])
def test_scaffold_splits_share_no_scaffold(bbbp, kind):
    split = split_indices(bbbp, kind=kind, fractions=(0.8, 0.1, 0.1), seed=3)
    _check_partition(split, len(bbbp))
    train, val, test = (_scaffolds(bbbp, part) for part in split)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(split[0]) <= 0.8 * len(bbbp)
    # balanced: validation within its own share; MoleculeNet's: within what train left of 90%
    assert len(split[1]) <= (0.1 if kind == "balanced_scaffold" else 0.9) * len(bbbp) - (
        0 if kind == "balanced_scaffold" else len(split[0]))
    # Greedy filling keeps the parts close to the requested sizes on a set this large.
    assert len(split[0]) > 0.75 * len(bbbp) and len(split[1]) > 0.07 * len(bbbp) and len(split[2]) > 0.07 * len(bbbp)


def test_scaffold_split_is_deterministic_largest_scaffolds_in_train(bbbp):
    a = split_indices(bbbp, kind="scaffold", seed=0)
    b = split_indices(bbbp, kind="scaffold", seed=123)
    assert a == b
    groups = {}
    for i, smiles in enumerate(bbbp.smiles):
        groups.setdefault(MurckoScaffold.MurckoScaffoldSmiles(smiles=smiles, includeChirality=False), []).append(i)
    largest = max(groups.values(), key=len)
    assert set(largest) <= set(a[0])


@pytest.mark.parametrize("kind", ["random", "balanced_scaffold"])
def test_seeded_splits_are_reproducible_and_differ_across_seeds(bbbp, kind):
    first = split_indices(bbbp, kind=kind, seed=1)
    again = split_indices(bbbp, kind=kind, seed=1)
    other = split_indices(bbbp, kind=kind, seed=2)
    assert first == again
    assert first != other and set(first[2]) != set(other[2])
    _check_partition(other, len(bbbp))


def test_random_split_sizes_follow_fractions(bbbp):
    n = len(bbbp)
    train, val, test = split_indices(bbbp, kind="random", fractions=(0.7, 0.2, 0.1), seed=0)
    assert (len(train), len(val)) == (round(0.7 * n), round(0.2 * n)) and len(test) == n - len(train) - len(val)
    train, val, test = split_indices(list("CCO" for _ in range(10)), kind="random", fractions=(1.0, 0.0, 0.0))
    assert (len(train), len(val), len(test)) == (10, 0, 0)


def test_splits_accept_a_list_of_smiles():
    smiles = ["c1ccccc1C", "c1ccccc1CC", "C1CCCCC1", "CCO", "CCN", "c1ccncc1", "c1ccncc1C", "C1CC1", "CCCC", "c1ccccc1O"]
    split = split_indices(smiles, kind="scaffold", fractions=(0.6, 0.2, 0.2))
    _check_partition(split, len(smiles))
    parts = [{MurckoScaffold.MurckoScaffoldSmiles(smiles=smiles[i]) for i in part} for part in split]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.1, 0.0), ("a", 0, 1)])
def test_bad_fractions_are_rejected(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_indices(["CCO"] * 5, fractions=fractions)


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="random.*scaffold.*balanced_scaffold"):
        split_indices(["CCO"], kind="stratified")


def test_save_and_load_split_round_trip(tmp_path):
    split = split_indices(["CCO", "CCN", "CCC", "c1ccccc1", "C1CC1"], kind="random", fractions=(0.6, 0.2, 0.2), seed=5)
    path = tmp_path / "nested" / "split.json"
    save_split(path, split)
    assert load_split(path) == tuple(split)
    save_split(path, {"train": [2], "val": [0], "test": [1]})
    assert load_split(path) == ([2], [0], [1])
    path.write_text('{"train": [1]}')
    with pytest.raises(ValueError, match="save_split"):
        load_split(path)


def test_scaffold_split_matches_moleculenet_on_a_hand_worked_fixture():
    # scaffold sets: "" {0, 3, 7}; cyclohexane {2, 6}; benzene {1, 4}; pyridine {5}.
    # MoleculeNet orders them by (size, first index) descending: "", cyclohexane (first 2),
    # benzene (first 1), pyridine. With n = 8 and 0.5 / 0.25 / 0.25 the cut-offs are 4 (train)
    # and 6 (train + val): "" -> train (3); cyclohexane 3 + 2 > 4, 3 + 0 + 2 <= 6 -> val;
    # benzene 3 + 2 > 4, 3 + 2 + 2 > 6 -> test; pyridine 3 + 1 <= 4 -> train.
    smiles = ["CCO", "Oc1ccccc1", "NC1CCCCC1", "CCC", "Cc1ccccc1", "c1ccncc1", "OC1CCCCC1", "CCCC"]
    train, val, test = split_indices(smiles, kind="scaffold", fractions=(0.5, 0.25, 0.25))
    assert (train, val, test) == ([0, 3, 7, 5], [2, 6], [1, 4])


def test_scaffold_split_lets_validation_use_the_room_train_left():
    # sets: "" {0, 1, 2}, benzene {3, 4, 5}, cyclohexane {6, 7}; n = 8, 0.5 / 0.25 / 0.25.
    # The tie of size 3 goes to benzene (first index 3 > 0): benzene -> train (3 <= 4);
    # "" 6 > 4 but 3 + 3 <= 6 -> val, although 3 > 0.25 * 8; cyclohexane 3 + 3 + 2 > 6 -> test.
    smiles = ["CCO", "CCN", "CCC", "Oc1ccccc1", "Nc1ccccc1", "Cc1ccccc1", "NC1CCCCC1", "OC1CCCCC1"]
    assert split_indices(smiles, kind="scaffold", fractions=(0.5, 0.25, 0.25)) == ([3, 4, 5], [0, 1, 2], [6, 7])
