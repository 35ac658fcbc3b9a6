"""Per-task standardization of regression targets with the training split's statistics."""
from __future__ import annotations

import torch


class TargetScaler:
    """y_std = (y - mean) / std per task, over present labels only.

    mean, std: (num_tasks,). A task with fewer than two labels or zero spread keeps std 1 so
    that the transform stays finite.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)

    @classmethod
    def fit(cls, y: torch.Tensor, mask: torch.Tensor) -> "TargetScaler":
        """y, mask: (num_molecules, num_tasks); missing labels (mask False) are ignored."""
        m = mask.to(torch.float64)
        y = torch.nan_to_num(y.to(torch.float64)) * m
        n = m.sum(0)
        mean = y.sum(0) / n.clamp_min(1)
        var = (((y - mean) * m) ** 2).sum(0) / (n - 1).clamp_min(1)
        std = var.sqrt()
        std = torch.where((n < 2) | (std < 1e-12), torch.ones_like(std), std)
        return cls(mean, std)

    def transform(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean.to(y.device)) / self.std.to(y.device)

    def inverse_transform(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std.to(y.device) + self.mean.to(y.device)

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TargetScaler":
        return cls(state["mean"], state["std"])
