"""Per-task standardization of regression targets (fit on the training split only)."""
from __future__ import annotations

import torch


class _fit_method:
    """``Standardizer.fit(y, mask)`` builds a new standardizer; ``s.fit(y, mask)`` refits ``s``."""

    def __init__(self, function):
        self.function = function

    def __get__(self, instance, owner):
        target = owner() if instance is None else instance
        return self.function.__get__(target, owner)


class Standardizer:
    """y_std = (y - mean) / std per task, with mean and std over the labels that are present.

    mean, std: (T,) float32. Tasks whose labels are all missing get mean 0 and std 1; constant
    tasks get std 1, so transform never divides by zero.
    """

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)

    @_fit_method
    def fit(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> "Standardizer":
        """y: (M, T) labels; mask: (M, T) bool, True where a label is present (None = all)."""
        y = torch.as_tensor(y, dtype=torch.float64)
        if y.dim() == 1:
            y = y[:, None]
        mask = torch.ones_like(y, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool).reshape(y.shape)
        count = mask.sum(0)
        total = torch.where(mask, y, 0.0).sum(0)
        mean = torch.where(count > 0, total / count.clamp(min=1), 0.0)
        var = torch.where(mask, (y - mean) ** 2, 0.0).sum(0) / count.clamp(min=1)
        std = var.sqrt()
        self.mean = mean.float()
        self.std = torch.where(std > 0, std, 1.0).float()
        return self

    def _params(self, like: torch.Tensor):
        if self.mean is None:
            raise RuntimeError("Standardizer: call fit(y, mask) on the training labels before transform")
        return self.mean.to(like.device, like.dtype), self.std.to(like.device, like.dtype)

    def transform(self, y: torch.Tensor) -> torch.Tensor:
        """(..., T) labels in original units -> standardized."""
        mean, std = self._params(y)
        return (y - mean) / std

    def inverse_transform(self, y: torch.Tensor) -> torch.Tensor:
        """(..., T) standardized values (e.g. predictions) -> original units."""
        mean, std = self._params(y)
        return y * std + mean

    def state_dict(self) -> dict:
        return {"mean": None if self.mean is None else self.mean.clone(), "std": None if self.std is None else self.std.clone()}

    def load_state_dict(self, state: dict) -> "Standardizer":
        self.__init__(state["mean"], state["std"])
        return self

    @classmethod
    def from_state_dict(cls, state: dict) -> "Standardizer":
        return cls(state["mean"], state["std"])

    def __repr__(self) -> str:
        return f"Standardizer(mean={self.mean}, std={self.std})"
