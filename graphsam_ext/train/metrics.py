"""Evaluation metrics in original target units, computed with numpy only.

Conventions follow the MoleculeNet / chemprop protocol:

* classification: ROC-AUC and PRC-AUC per task over the molecules whose label is present,
  averaged over the tasks where both classes occur (a task with one class in the split has no
  defined AUC and is skipped);
* regression: RMSE and MAE per task over present labels, averaged over tasks.
"""
from __future__ import annotations

import math

import numpy as np

CLASSIFICATION_METRICS = ("roc_auc", "prc_auc")
REGRESSION_METRICS = ("rmse", "mae")
HIGHER_IS_BETTER = {"roc_auc": True, "prc_auc": True, "rmse": False, "mae": False}


def metric_names(task_type: str) -> tuple[str, ...]:
    if task_type == "classification":
        return CLASSIFICATION_METRICS
    if task_type == "regression":
        return REGRESSION_METRICS
    raise ValueError(f"task_type must be 'classification' or 'regression', got {task_type!r}")


def default_metric(task_type: str) -> str:
    return metric_names(task_type)[0]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank (what the Mann-Whitney U needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve of binary labels ``y_true`` (0/1) against ``y_score``.

    Computed as the Mann-Whitney statistic P(score_pos > score_neg) + 0.5 P(tie), which equals
    the trapezoidal area under the ROC curve. NaN when only one class is present.
    """
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    pos = y_true > 0.5
    n_pos = int(pos.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(y_score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold, from the highest score down,
    preceded by the point (recall 0, precision 1)."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel() > 0.5
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    order = np.argsort(-y_score, kind="mergesort")
    y_sorted, s_sorted = y_true[order], y_score[order]
    # one point per distinct threshold: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / max(tps[-1], 1.0)
    return np.r_[1.0, precision], np.r_[0.0, recall]


def prc_auc(y_true, y_score) -> float:
    """Area under the precision-recall curve (trapezoidal rule over recall). NaN when only one
    class is present."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    if y.size == 0 or (y > 0.5).all() or (y <= 0.5).all():
        return math.nan
    precision, recall = precision_recall_curve(y_true, y_score)
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def rmse(y_true, y_pred) -> float:
    diff = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return float(np.sqrt(np.mean(diff**2))) if diff.size else math.nan


def mae(y_true, y_pred) -> float:
    diff = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return float(np.mean(np.abs(diff))) if diff.size else math.nan


_PER_TASK = {"roc_auc": roc_auc, "prc_auc": prc_auc, "rmse": rmse, "mae": mae}


def evaluate(y_true, y_pred, mask, task_type: str) -> dict:
    """All metrics of ``task_type`` averaged over tasks.

    y_true, y_pred, mask: (num_molecules, num_tasks); y_pred holds probabilities for
    classification and values in original units for regression; mask marks present labels.
    Returns ``{metric: mean over valid tasks, "<metric>_tasks": number of tasks averaged}``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if not (y_true.shape == y_pred.shape == mask.shape) or y_true.ndim != 2:
        raise ValueError(
            f"evaluate: y_true {y_true.shape}, y_pred {y_pred.shape} and mask {mask.shape} must be "
            "equal (num_molecules, num_tasks) shapes"
        )
    out = {}
    for name in metric_names(task_type):
        values = []
        for t in range(y_true.shape[1]):
            m = mask[:, t]
            if not m.any():
                continue
            v = _PER_TASK[name](y_true[m, t], y_pred[m, t])
            if not math.isnan(v):
                values.append(v)
        out[name] = float(np.mean(values)) if values else math.nan
        out[f"{name}_tasks"] = len(values)
    return out


def is_better(metric: str, new: float, best: float | None) -> bool:
    """True when ``new`` improves on ``best`` (None or NaN best is always beaten by a number)."""
    if new is None or math.isnan(new):
        return False
    if best is None or math.isnan(best):
        return True
    return new > best if HIGHER_IS_BETTER[metric] else new < best
