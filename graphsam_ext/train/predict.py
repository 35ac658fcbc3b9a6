"""Predictions for new SMILES from one or more saved models (``best.pt``), averaged when several
are given (e.g. the seeds of a run). Invalid SMILES are reported per row, never a crash."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphsam_ext.errors import UserError
from graphsam_ext.models import ModelConfig, MolecularGraphTransformer
from graphsam_ext.train.checkpoint import load_checkpoint
from graphsam_ext.train.loop import predict_batches
from graphsam_ext.train.targets import TargetScaler


def find_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint file itself, or every ``best.pt`` under a run directory (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.rglob("best.pt"))
        if not found:
            raise FileNotFoundError(f"no best.pt checkpoint under {path}; pass a checkpoint file or a run directory")
        return found
    raise FileNotFoundError(f"checkpoint {path} does not exist")


def load_model(ckpt: dict, device="cpu"):
    model = MolecularGraphTransformer(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval()


def featurizer_for(ckpt: dict, source: str):
    """Rebuild the checkpoint's featurizer; refuse one whose features differ from this install's."""
    from graphsam_ext.data import Featurizer

    stored = ckpt["featurizer"]
    try:
        feat = Featurizer.from_config(stored)
    except ValueError as exc:
        raise UserError(f"checkpoint {source} was trained with an incompatible featurizer: {exc}") from exc
    if feat.config() != stored:
        raise UserError(
            f"checkpoint {source} was trained with featurizer {stored}, but this installation's featurizer with the "
            f"same settings is {feat.config()}; retrain the model with this graphsam-ext version"
        )
    return feat


@dataclass
class Predictions:
    smiles: list[str]
    task_names: list[str]
    task_type: str
    values: np.ndarray  # (rows, tasks), NaN for invalid rows
    errors: list[str] = field(default_factory=list)  # "" for valid rows
    checkpoints: list[str] = field(default_factory=list)

    @property
    def num_invalid(self) -> int:
        return sum(1 for e in self.errors if e)


def predict_smiles(smiles: list[str], checkpoints: list[Path], device="cpu", batch_size: int = 256) -> Predictions:
    """Average the predictions (probabilities or original-unit values) of ``checkpoints``."""
    from graphsam_ext.data import collate

    ckpts = [load_checkpoint(p, map_location="cpu") for p in checkpoints]
    first = ckpts[0]
    for p, c in zip(checkpoints[1:], ckpts[1:]):
        if c["task_names"] != first["task_names"] or c["featurizer"] != first["featurizer"]:
            raise UserError(
                f"checkpoints {checkpoints[0]} and {p} predict different tasks or use different featurizers; "
                "pass one checkpoint file or a run directory of one model family"
            )
    feat = featurizer_for(first, str(checkpoints[0]))
    graphs, errors = [], []
    for s in smiles:
        g = feat(s) if isinstance(s, str) and s.strip() else None
        graphs.append(g)
        errors.append("" if g is not None else ("empty SMILES" if not (s or "").strip() else "RDKit could not parse it"))
    valid = [i for i, g in enumerate(graphs) if g is not None]
    values = np.full((len(smiles), len(first["task_names"])), np.nan)
    if valid:
        total = np.zeros((len(valid), len(first["task_names"])))
        batches = [collate([graphs[i] for i in valid[start:start + batch_size]])
                   for start in range(0, len(valid), batch_size)]
        for ckpt in ckpts:
            scaler = TargetScaler.from_state_dict(ckpt["scaler"]) if ckpt["scaler"] else None
            pred, _, _ = predict_batches(load_model(ckpt, device), batches, device, ckpt["task_type"], scaler)
            total += pred
        values[valid] = total / len(ckpts)
    return Predictions(list(smiles), list(first["task_names"]), first["task_type"], values, errors,
                       [str(p) for p in checkpoints])


def read_smiles_csv(path: str | Path, smiles_column: str | None = None) -> tuple[list[str], str]:
    """The SMILES column of a CSV (default: a column named smiles in any case, else the first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: {path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if not columns:
            raise UserError(f"--data: {path} has no header row")
        if smiles_column is None:
            smiles_column = next((c for c in columns if c.strip().lower() == "smiles"), columns[0])
        elif smiles_column not in columns:
            raise UserError(f"--smiles-column {smiles_column!r} is not a column of {path}; available columns: "
                             f"{', '.join(columns)}")
        return [(row.get(smiles_column) or "").strip() for row in reader], smiles_column


def write_predictions(pred: Predictions, out, smiles_column: str = "smiles") -> None:
    """Write one row per input SMILES to ``out`` (a path or an open text stream): the 1-based
    row number, the SMILES, one column per task (probabilities for classification), and the
    reason a row has no prediction."""
    if hasattr(out, "write"):
        _write_rows(pred, out, smiles_column)
    else:
        with open(out, "w", newline="") as fh:
            _write_rows(pred, fh, smiles_column)


def _write_rows(pred: Predictions, fh, smiles_column: str) -> None:
    suffix = "_probability" if pred.task_type == "classification" else ""
    w = csv.writer(fh)
    w.writerow(["row", smiles_column, *[f"{t}{suffix}" for t in pred.task_names], "error"])
    for i, (s, vals, err) in enumerate(zip(pred.smiles, pred.values, pred.errors)):
        w.writerow([i + 1, s, *["" if np.isnan(v) else f"{v:.6g}" for v in vals], err])
