"""The engine interface: what a SAM-family optimizer may ask of its parameters.

An optimizer (``optim/family.py`` and its subclasses) never touches a parameter, gradient or
state tensor itself; it calls the verbs below on ``self.engine``. Three engines implement them
(``reference.py``, ``foreach.py``, ``fused.py``), so a new SAM variant written with these verbs
runs on all three, and a new base optimizer is one entry of ``optim.base.BASE_UPDATES``.

Shapes and types:
- ``params``: the parameters that require grad, in the engine's order (all groups).
- A *source* is ``"grad"`` (the gradients) or the name of a per-parameter state buffer the
  optimizer asked for (``buffers`` at construction, e.g. ``"direction"``), shaped like each
  parameter and kept in ``optimizer.state[p][name]``.
- Norms and dot products are float64 tensors on the parameters' device: 0-dim for the whole
  model, or ``(len(params),)`` per tensor (``per_tensor=True``), in ``params`` order.
- A *scale* is a 0-dim float64 tensor or one value per tensor ``(len(params),)``.
- ``skip`` is a 0-dim bool tensor (or None): a step to skip because a norm was not finite.
  Verbs that take it make the skip on the device where they can (the fused engine never reads
  it back to the host; the per-tensor engines may).
- Nothing returns a Python number: a step needs no host synchronization.
- Gradient scaling (fp16 with a ``torch.amp.GradScaler``): while ``grad_scale`` (0-dim, the loss
  scale) and ``found_inf`` (0-dim float32) are set, the gradients each closure call makes are of
  the scaled loss; after ``unscale()`` every verb sees them divided by ``grad_scale``, and
  ``found_inf`` becomes 1 when one of them is not finite. The fused engine unscales inside its next
  gradient reduction (one pass with the norm the step takes anyway); the per-tensor engines at once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

GRAD = "grad"


def trainable_groups(param_groups: list) -> list:
    """The parameters of each group that require grad: the ones an engine optimizes."""
    return [[p for p in group["params"] if p.requires_grad] for group in param_groups]


def is_skipped(skip: Tensor | None) -> bool:
    """Host check of the skip flag (the per-tensor engines only; the fused kernels read it on device)."""
    return skip is not None and bool(skip)


class Term(NamedTuple):
    """``scale * source`` in ``Engine.combine``: scale a 0-dim tensor (any float dtype) or per tensor."""

    scale: Tensor
    source: str


class Engine(ABC):
    """The verbs of a SAM-family step. ``Engine(optimizer, buffers)``: ``buffers`` names the
    per-parameter state buffers (besides the base optimizer's) the optimizer works with."""

    params: list
    perturbed: bool  # between perturb() and the restore
    grad_scale: Tensor | None = None  # the running step's loss scale (fp16 with a GradScaler), or None
    found_inf: Tensor | None = None   # set to 1 by the unscale when a gradient is not finite

    # -- lifecycle -------------------------------------------------------------------------
    @abstractmethod
    def adopt_loaded_state(self) -> None:
        """After ``load_state_dict`` (or a rebuild): take up the values in ``optimizer.state``."""

    @abstractmethod
    def release(self, params: list) -> None:
        """Parameters this engine no longer optimizes (frozen): drop their gradients."""

    # -- gradients -------------------------------------------------------------------------
    @abstractmethod
    def zero_grad(self) -> None:
        """Zero the gradients in place (before each closure call)."""

    @abstractmethod
    def prepare(self) -> None:
        """After a closure: adopt the gradients (a missing one counts as zero)."""

    @abstractmethod
    def unscale(self) -> None:
        """After a closure of a scaled step (``grad_scale`` set), once: its gradients are of the
        scaled loss; every later verb reads them divided by ``grad_scale``, and ``found_inf`` is
        set to 1 if one is not finite (fused: inside the pass of the next gradient norm)."""

    # -- reductions ------------------------------------------------------------------------
    @abstractmethod
    def sum_squares(self, source: str = GRAD, weight_power: int = 0, shift: float = 0.0,
                    per_tensor: bool = False) -> Tensor:
        """sum (|theta|^weight_power * x + shift)^2 over ``source`` x: 0-dim or per tensor."""

    def grad_sq(self, weight_power: int = 0, shift: float = 0.0, per_tensor: bool = False) -> Tensor:
        return self.sum_squares(GRAD, weight_power, shift, per_tensor)

    def direction_sq(self, weight_power: int = 0, per_tensor: bool = False) -> Tensor:
        return self.sum_squares("direction", weight_power, 0.0, per_tensor)

    @abstractmethod
    def dot(self, a: str, b: str) -> Tensor:
        """sum <a, b> over the model, 0-dim float64."""

    # -- element-wise updates --------------------------------------------------------------
    @abstractmethod
    def combine(self, target: str, terms: list, wide: bool = False) -> None:
        """target <- sum of ``Term(scale, source)``; ``target`` may be one of the sources.
        wide: compute in float64 and round once (for differences of nearly equal vectors, where
        one rounding of a scale would otherwise be amplified by the cancellation)."""

    @abstractmethod
    def snapshot(self, source: str) -> list:
        """A copy of ``source`` (for ``revert``)."""

    @abstractmethod
    def revert(self, source: str, skip: Tensor, saved: list) -> None:
        """Put ``saved`` back into ``source`` where ``skip`` is true (device-side select, no sync)."""

    def snapshot_direction(self) -> list:
        return self.snapshot("direction")

    def revert_direction(self, skip: Tensor, saved: list) -> None:
        self.revert("direction", skip, saved)

    # -- perturbation ----------------------------------------------------------------------
    @abstractmethod
    def perturb(self, source: str, scale: Tensor, adaptive: bool, skip: Tensor | None) -> None:
        """Back the parameters up, then theta <- theta + scale * x (adaptive: + scale theta^2 x)
        with x = ``source``; a skipped perturbation still takes the backup."""

    @abstractmethod
    def restore(self) -> None:
        """theta <- the backup of the last ``perturb`` (an exact copy)."""

    @abstractmethod
    def direction_update(self, inv_norm: Tensor, beta: float, init: bool, skip: Tensor | None) -> Tensor:
        """GraphSAM's EMA d <- beta d + (1 - beta) g inv_norm (init: d <- g inv_norm), unless
        skipped; returns ||d||^2. inv_norm: 0-dim or per tensor."""

    # -- base update -----------------------------------------------------------------------
    @abstractmethod
    def base_step(self, skip: Tensor | None, restore: bool, fold: tuple | None = None) -> Tensor | None:
        """Restore (if ``restore``) and run the base update with the current gradients unless
        skipped. fold: (inv_norm, beta) also runs ``direction_update`` on the gradients first
        and returns ||d||^2 (the fused engine does all of it in one pass)."""


def zeros64(device) -> Tensor:
    return torch.zeros((), dtype=torch.float64, device=device)
