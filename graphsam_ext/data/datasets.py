"""Molecule datasets: CSV parsing, label masks, featurization with an on-disk cache.

A dataset keeps all molecules in a few concatenated tensors (atoms, edges, per-molecule
offsets) rather than a list of small objects: the cache file is then a handful of tensors that
load in milliseconds, and DataLoader workers share them without copying.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import math
import re
from pathlib import Path

import torch

from graphsam_ext.data import sources
from graphsam_ext.data._rdkit import rdkit_version
from graphsam_ext.data.batch import MoleculeItem
from graphsam_ext.data.featurize import Featurizer, parse_smiles
from graphsam_ext.data.graph import Graph
from graphsam_ext.errors import UserError

TASK_TYPES = ("classification", "regression")
# Bump when the cache layout or the CSV interpretation changes: part of every cache key.
CACHE_FORMAT = 2
# Cells read as a missing label besides the empty string (what pandas and R write for NaN).
_MISSING = {"", "nan", "na", "n/a", "null", "none"}
# Columns that identify a row rather than measure something; never picked as default targets.
_ID_COLUMN = re.compile(r"^(id|num|index|name|compound|mol_id|cmpd_chemblid)$|(_id|\bid)$", re.IGNORECASE)
_MAX_REPORTED_INVALID = 5


class MoleculeDataset(torch.utils.data.Dataset):
    """Featurized molecules with labels; ``dataset[i]`` is a :class:`MoleculeItem`.

    x:          (total_atoms, atom_dim) float32 atoms of every molecule, concatenated
    edge_index: (2, total_edges) int64, node indices local to each molecule
    edge_attr:  (total_edges, edge_dim) float32
    node_ptr:   (M + 1,) int64; molecule i owns atoms node_ptr[i]:node_ptr[i + 1]
    edge_ptr:   (M + 1,) int64; molecule i owns edges edge_ptr[i]:edge_ptr[i + 1]
    y:          (M, T) float32 labels, 0 where missing; mask: (M, T) bool, True = label present
    mol_features: (M, D) float32 molecule descriptors, or None (featurizer without descriptors)
    """

    def __init__(self, x, edge_index, edge_attr, node_ptr, edge_ptr, y, mask, smiles, task_names, task_type, summary,
                 featurizer, mol_features=None):
        self.x = x
        self.edge_index = edge_index
        self.edge_attr = edge_attr
        self.node_ptr = node_ptr
        self.edge_ptr = edge_ptr
        self.y = y
        self.mask = mask
        self.smiles = list(smiles)
        self.task_names = list(task_names)
        self.task_type = task_type
        self.summary = summary
        self.featurizer = featurizer
        self.mol_features = mol_features

    @classmethod
    def from_graphs(cls, graphs, y, mask, smiles, task_names, task_type, summary, featurizer) -> "MoleculeDataset":
        nodes = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
        edges = torch.tensor([g.num_edges for g in graphs], dtype=torch.long)
        node_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(nodes, 0)])
        edge_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(edges, 0)])
        return cls(
            torch.cat([g.x for g in graphs]),
            torch.cat([g.edge_index for g in graphs], dim=1),
            torch.cat([g.edge_attr for g in graphs]),
            node_ptr, edge_ptr, y, mask, smiles, task_names, task_type, summary, featurizer,
            torch.stack([g.mol_features for g in graphs]) if graphs and graphs[0].mol_features is not None else None,
        )

    def __len__(self) -> int:
        return len(self.smiles)

    def __getitem__(self, index) -> MoleculeItem:
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} molecules")
        n0, n1 = int(self.node_ptr[i]), int(self.node_ptr[i + 1])
        e0, e1 = int(self.edge_ptr[i]), int(self.edge_ptr[i + 1])
        graph = Graph(self.x[n0:n1], self.edge_index[:, e0:e1], self.edge_attr[e0:e1],
                      None if self.mol_features is None else self.mol_features[i])
        return MoleculeItem(graph, self.y[i], self.mask[i], self.smiles[i])

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def _state(self) -> dict:
        return {
            "format": CACHE_FORMAT,
            "x": self.x,
            "edge_index": self.edge_index,
            "edge_attr": self.edge_attr,
            "node_ptr": self.node_ptr,
            "edge_ptr": self.edge_ptr,
            "y": self.y,
            "mask": self.mask,
            "mol_features": self.mol_features,
            "smiles": self.smiles,
            "task_names": self.task_names,
            "task_type": self.task_type,
            # JSON keeps the nested summary loadable with torch.load(weights_only=True).
            "summary": json.dumps(self.summary),
        }

    def __repr__(self) -> str:
        return (
            f"MoleculeDataset({self.summary.get('source')!r}, molecules={len(self)}, "
            f"tasks={self.num_tasks}, task_type={self.task_type!r})"
        )


def load_dataset(
    name=None,
    path=None,
    smiles_column=None,
    target_columns=None,
    task_type=None,
    data_dir=None,
    cache_dir=None,
    featurizer=None,
) -> MoleculeDataset:
    """Load and featurize a dataset.

    name: one of DATASET_NAMES (the six MoleculeNet sets or "default"); path: any CSV file;
        neither: the embedded default (CHEMBL2321810 pIC50 from RDKit's FreeWilson example).
    smiles_column / target_columns: column names; defaults: the named set's layout, or for a
        CSV the column called "smiles" (any case) and every other column whose first value is a
        number, except identifier-like names (id, num, index, name, ..._id).
    task_type: "classification" or "regression"; inferred (all labels 0/1 -> classification).
    data_dir: where to look for named sets first (then $GRAPHSAM_DATA_DIR, then the user cache).
    cache_dir: root of the featurization cache and downloads; None = default_cache_dir();
        False = do not cache featurized molecules.
    featurizer: a Featurizer (default ``Featurizer()``).
    """
    if name is not None and path is not None:
        raise UserError("load_dataset: pass either name= (a known dataset) or path= (a CSV file), not both")
    featurizer = Featurizer() if featurizer is None else featurizer
    if task_type is not None and task_type not in TASK_TYPES:
        raise UserError(f"task_type must be one of {TASK_TYPES} or None (infer), got {task_type!r}")
    if isinstance(target_columns, str):
        target_columns = [target_columns]

    reference_copy = None
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"load_dataset: path={str(path)!r} is not a file; pass the path of a CSV file")
        files, label = [path], path.stem
    elif name is None or str(name).lower() == sources.DEFAULT_NAME:
        files, label = list(sources.default_files()), sources.DEFAULT_NAME
    else:
        key = str(name).lower()
        if key not in sources.DATASETS:
            raise UserError(f"unknown dataset name {name!r}; choose one of {', '.join(sources.DATASET_NAMES)} or pass path=<file.csv>")
        spec, csv_path = sources.resolve_named(key, data_dir=data_dir, cache_dir=cache_dir)
        files, label = [csv_path], key
        smiles_column = smiles_column or spec.smiles_column
        if target_columns is None and spec.target_columns is not None:
            target_columns = list(spec.target_columns)
        task_type = task_type or spec.task_type

    digest = sources.file_sha256(*files)
    if label in sources.DATASETS:
        reference_copy = digest == sources.DATASETS[label].csv_sha256
    cache_file = None
    if cache_dir is not False:
        key_material = {
            "format": CACHE_FORMAT,
            "sha256": digest,
            "label": label,
            "smiles_column": smiles_column,
            "target_columns": target_columns,
            "task_type": task_type,
            "featurizer": featurizer.config(),
            "rdkit": rdkit_version(),
        }
        key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:24]
        root = Path(cache_dir).expanduser() if cache_dir else sources.default_cache_dir()
        cache_file = root / "featurized" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}-{key}.pt"
        cached = _load_cached(cache_file, featurizer)
        if cached is not None:
            return cached

    if label == sources.DEFAULT_NAME:
        rows, header, source = sources.read_default_rows()
        smiles_column = smiles_column or "smiles"
        target_columns = target_columns or [sources.DEFAULT_TASK]
    else:
        header, rows = _read_csv(files[0])
        source = str(files[0])
    dataset = _build(rows, header, source, smiles_column, target_columns, task_type, featurizer)
    dataset.summary.update(sha256=digest, reference_copy=reference_copy, cached=False)
    if cache_file is not None:
        _save_cached(cache_file, dataset)
    return dataset


def _read_csv(path: Path):
    """Header and rows (line number, list of cells) of a CSV file; line numbers count the header as 1."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: the file is empty; expected a header row with a SMILES column and target columns")
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    return [cell.strip() for cell in header], rows


def _pick_smiles_column(header, requested, source) -> int:
    if requested is not None:
        if requested not in header:
            raise UserError(f"{source}: smiles_column={requested!r} is not a column; available columns: {header}")
        return header.index(requested)
    exact = [i for i, column in enumerate(header) if column.lower() == "smiles"]
    loose = [i for i, column in enumerate(header) if "smiles" in column.lower()]
    for found in (exact, loose):
        if len(found) == 1:
            return found[0]
    raise UserError(f"{source}: cannot tell which column holds SMILES; pass smiles_column= (available columns: {header})")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _pick_target_columns(header, rows, smiles_index, requested, source) -> list[int]:
    if requested is not None:
        missing = [column for column in requested if column not in header]
        if missing:
            raise UserError(f"{source}: target column(s) {missing} not found; available columns: {header}")
        if not requested:
            raise UserError(f"{source}: target_columns is empty; name at least one of {header}")
        return [header.index(column) for column in requested]
    chosen = []
    for j, column in enumerate(header):
        if j == smiles_index or _ID_COLUMN.search(column):
            continue
        # Judge a column by its first value: a numeric column with a stray bad cell further down
        # is still a target, and _parse_labels then names the offending line.
        first = next((row[j].strip() for _, row in rows if j < len(row) and row[j].strip().lower() not in _MISSING), None)
        if first is not None and _is_number(first):
            chosen.append(j)
    if not chosen:
        raise UserError(f"{source}: no numeric target column found; pass target_columns= (available columns: {header})")
    return chosen


def _parse_labels(rows, header, smiles_index, target_indices, source):
    """(M, T) float32 labels (0 where missing) and bool mask; a non-numeric cell names its line."""
    values = torch.zeros(len(rows), len(target_indices), dtype=torch.float32)
    mask = torch.zeros(len(rows), len(target_indices), dtype=torch.bool)
    for r, (line, row) in enumerate(rows):
        for t, j in enumerate(target_indices):
            text = row[j].strip() if j < len(row) else ""
            if text.lower() in _MISSING:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                smiles = row[smiles_index] if smiles_index < len(row) else ""
                raise UserError(
                    f"{source}: line {line} (SMILES {smiles.strip()!r}) has non-numeric value {text!r} in target "
                    f"column {header[j]!r}; targets must be numbers, or blank for a missing label"
                )
            values[r, t] = value
            mask[r, t] = True
    return values, mask


def _infer_task_type(values, mask, requested, header, target_indices, rows, source) -> str:
    present = values[mask]
    binary = bool(((present == 0) | (present == 1)).all())
    if requested is None:
        return "classification" if binary and present.numel() > 0 else "regression"
    if requested == "classification" and not binary:
        r, t = [int(v) for v in torch.nonzero(mask & (values != 0) & (values != 1))[0]]
        raise UserError(
            f"{source}: task_type='classification' needs labels 0/1, but line {rows[r][0]} has "
            f"{values[r, t].item()} in column {header[target_indices[t]]!r}; use task_type='regression'"
        )
    return requested


def _build(rows, header, source, smiles_column, target_columns, task_type, featurizer) -> MoleculeDataset:
    if not rows:
        raise UserError(f"{source}: no data rows below the header; the dataset is empty")
    smiles_index = _pick_smiles_column(header, smiles_column, source)
    target_indices = _pick_target_columns(header, rows, smiles_index, target_columns, source)
    values, mask = _parse_labels(rows, header, smiles_index, target_indices, source)
    task_type = _infer_task_type(values, mask, task_type, header, target_indices, rows, source)

    graphs, kept, smiles_kept, invalid = [], [], [], []
    for r, (line, row) in enumerate(rows):
        smiles = row[smiles_index].strip() if smiles_index < len(row) else ""
        graph, reason = _featurize(featurizer, smiles)
        if graph is None:
            invalid.append({"line": line, "smiles": smiles, "reason": reason})
            continue
        graphs.append(graph)
        kept.append(r)
        smiles_kept.append(smiles)
    if not graphs:
        shown = "; ".join(f"line {e['line']} {e['smiles']!r}: {e['reason']}" for e in invalid[:_MAX_REPORTED_INVALID])
        raise UserError(
            f"{source}: none of the {len(rows)} SMILES in column {header[smiles_index]!r} could be read by RDKit "
            f"{rdkit_version()} (first failures: {shown}); check that smiles_column= names the SMILES column"
        )
    y, mask = values[kept], mask[kept]
    task_names = [header[j] for j in target_indices]
    summary = {
        "source": source,
        "rows": len(rows),
        "kept": len(graphs),
        "skipped": len(invalid),
        "first_invalid": invalid[:_MAX_REPORTED_INVALID],
        "unlabeled": int((~mask.any(dim=1)).sum()),
        "missing_labels": int((~mask).sum()),
        "rdkit_version": rdkit_version(),
        "smiles_column": header[smiles_index],
        "task_type": task_type,
        "tasks": _task_statistics(y, mask, task_names, task_type),
        "featurizer": featurizer.config(),
    }
    return MoleculeDataset.from_graphs(graphs, y, mask, smiles_kept, task_names, task_type, summary, featurizer)


def _featurize(featurizer, smiles):
    """(graph, None) or (None, reason); custom featurizers without parse support get a generic reason."""
    if isinstance(featurizer, Featurizer):
        mol, reason = parse_smiles(smiles)
        return (None, reason) if mol is None else (featurizer.featurize_mol(mol), None)
    graph = featurizer(smiles)
    return (graph, None) if graph is not None else (None, "featurizer returned None")


def _task_statistics(y, mask, task_names, task_type) -> dict:
    stats = {}
    for t, task in enumerate(task_names):
        present = y[mask[:, t], t].double()
        entry = {"count": int(present.numel()), "missing": int((~mask[:, t]).sum())}
        if task_type == "classification":
            entry.update(positive=int((present == 1).sum()), negative=int((present == 0).sum()))
        elif present.numel():
            entry.update(
                mean=float(present.mean()),
                std=float(present.std(unbiased=False)),
                min=float(present.min()),
                max=float(present.max()),
            )
        stats[task] = entry
    return stats


def _load_cached(cache_file: Path, featurizer) -> MoleculeDataset | None:
    if not cache_file.is_file():
        return None
    try:
        state = torch.load(cache_file, weights_only=True)
    except Exception:  # a truncated or foreign file: featurize again and overwrite it
        return None
    if not isinstance(state, dict) or state.get("format") != CACHE_FORMAT:
        return None
    summary = json.loads(state["summary"])
    summary.update(cached=True, cache_file=str(cache_file))
    return MoleculeDataset(
        state["x"], state["edge_index"], state["edge_attr"], state["node_ptr"], state["edge_ptr"],
        state["y"], state["mask"], state["smiles"], state["task_names"], state["task_type"], summary, featurizer,
        state.get("mol_features"),
    )


def _save_cached(cache_file: Path, dataset: MoleculeDataset) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader or an interrupted run never sees half a file.
    partial = cache_file.with_suffix(f".partial-{os.getpid()}")
    torch.save(dataset._state(), partial)
    partial.replace(cache_file)
    dataset.summary["cache_file"] = str(cache_file)
