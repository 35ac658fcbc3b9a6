"""Training losses over (num_molecules, num_tasks) targets with missing labels masked out."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the present labels.

    logits, y, mask: (G, T). Missing labels (mask False) contribute nothing; a batch with no
    present label gives 0 with a gradient graph, so a step on it is a no-op.
    """
    mask = mask.to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y).to(logits.dtype), reduction="none")
    return (per * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the present labels; ``y`` must already be standardized with the
    training split's mean and std, so every task weighs the same."""
    mask = mask.to(pred.dtype)
    diff = (pred - torch.nan_to_num(y).to(pred.dtype)) * mask
    return (diff * diff).sum() / mask.sum().clamp_min(1.0)


def loss_for(task_type: str):
    if task_type == "classification":
        return masked_bce
    if task_type == "regression":
        return masked_mse
    raise ValueError(f"task_type must be 'classification' or 'regression', got {task_type!r}")
