"""Train / validation / test splits: random, scaffold and balanced scaffold; saved as JSON.

Scaffold splits group molecules by Bemis-Murcko scaffold (RDKit ``MurckoScaffoldSmiles``,
chirality ignored; acyclic molecules share the empty scaffold) and never put one scaffold in two
parts.
  * "scaffold": MoleculeNet's scaffold split (DeepChem's ``ScaffoldSplitter``, which MoleculeNet
    and most papers use). Deterministic, seed unused. Scaffold sets are ordered by size and then
    by the index of their first molecule, both descending; each set goes to train unless that
    would take train past ``f_train * n``, else to validation unless train + validation would
    pass ``(f_train + f_val) * n``, else to test.
  * "balanced_scaffold": chemprop's balanced scaffold split (``scaffold_split(balanced=True)``).
    Sets larger than half the validation or the test share go first, the rest after them, each
    part shuffled by ``seed``; a set goes to train while train stays within its share, else to
    validation while validation stays within its share, else to test. Large scaffolds land in
    train and the validation and test sets get a mix of small ones.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

from graphsam_ext.data._rdkit import rdkit_modules
from graphsam_ext.errors import UserError

SPLIT_KINDS = ("random", "scaffold", "balanced_scaffold")


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise UserError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, e.g. (0.8, 0.1, 0.1); got {fractions!r}"
        )
    return values


def _smiles_of(dataset) -> list[str]:
    smiles = getattr(dataset, "smiles", dataset)
    return list(smiles)


def scaffold_of(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES of a molecule (empty string for acyclic molecules)."""
    rd = rdkit_modules()
    with rd.rdBase.BlockLogs():
        mol = rd.Chem.MolFromSmiles(smiles)
    if mol is None:
        raise UserError(f"cannot compute the scaffold of {smiles!r}: RDKit cannot parse it")
    return rd.MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffold_groups(dataset) -> dict[str, list[int]]:
    """{scaffold SMILES: sorted molecule indices}; computed once per dataset object and kept."""
    cached = getattr(dataset, "_scaffold_groups", None)
    if cached is not None:
        return cached
    groups: dict[str, list[int]] = {}
    for i, smiles in enumerate(_smiles_of(dataset)):
        groups.setdefault(scaffold_of(smiles), []).append(i)
    if hasattr(dataset, "smiles"):
        dataset._scaffold_groups = groups
    return groups


def split_indices(dataset, kind: str = "random", fractions=(0.8, 0.1, 0.1), seed: int = 0):
    """(train, val, test) lists of molecule indices into ``dataset`` (or a list of SMILES).

    random: a permutation by ``seed``; sizes round(f * n) for train and val, the rest test.
    scaffold / balanced_scaffold: see the module docstring; sizes approximate the fractions.
    """
    kind = kind.replace("-", "_") if isinstance(kind, str) else kind  # the CLI spells it balanced-scaffold
    if kind not in SPLIT_KINDS:
        raise UserError(f"kind must be one of {SPLIT_KINDS}, got {kind!r}")
    f_train, f_val, _ = _check_fractions(fractions)
    n = len(dataset)
    if kind == "random":
        order = np.random.default_rng(seed).permutation(n).tolist()
        n_train = min(n, round(f_train * n))
        n_val = min(n - n_train, round(f_val * n))
        return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]

    train_cap, val_cap, test_cap = f_train * n, f_val * n, (1.0 - f_train - f_val) * n
    train, val, test = [], [], []
    if kind == "scaffold":
        groups = sorted(scaffold_groups(dataset).values(), key=lambda g: (len(g), g[0]), reverse=True)
        for group in groups:
            if len(train) + len(group) <= train_cap:
                train += group
            elif len(train) + len(val) + len(group) <= train_cap + val_cap:
                val += group
            else:
                test += group
        return train, val, test

    rng = random.Random(seed)
    # the shuffles start from largest-first order (ties by first index), as before: balanced
    # splits stay the ones earlier versions wrote for each seed
    groups = sorted(scaffold_groups(dataset).values(), key=lambda g: (-len(g), g[0]))
    big = [g for g in groups if len(g) > val_cap / 2 or len(g) > test_cap / 2]
    small = [g for g in groups if not (len(g) > val_cap / 2 or len(g) > test_cap / 2)]
    rng.shuffle(big)
    rng.shuffle(small)
    for group in big + small:
        if len(train) + len(group) <= train_cap:
            train += group
        elif len(val) + len(group) <= val_cap:
            val += group
        else:
            test += group
    return train, val, test


def save_split(path, split, **metadata) -> None:
    """Write (train, val, test) index lists (or a dict with those keys) to a JSON file, with
    optional metadata entries (a run directory records ``kind`` and ``seed``)."""
    if isinstance(split, dict):
        split = (split["train"], split["val"], split["test"])
    train, val, test = split
    payload = {"format": "graphsam-split-v1", **metadata, "train": [int(i) for i in train],
               "val": [int(i) for i in val], "test": [int(i) for i in test]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def load_split(path) -> tuple[list[int], list[int], list[int]]:
    """The (train, val, test) index lists written by :func:`save_split`."""
    payload = json.loads(Path(path).read_text())
    missing = [key for key in ("train", "val", "test") if key not in payload]
    if missing:
        raise UserError(f"{path}: not a split file (keys {missing} missing); write it with save_split()")
    return list(payload["train"]), list(payload["val"]), list(payload["test"])
