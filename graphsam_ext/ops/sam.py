"""Flat-buffer SAM / GraphSAM / base-optimizer ops.

Every op works on one contiguous float32/float64 buffer (and same-sized twins). Values that
depend on data (norms, scales, the skip flag, Adam's step) are tensors on the buffer's device,
never Python numbers, so a step needs no host synchronization. ``offsets`` (int64, (nseg + 1,))
splits a buffer into segments (one per parameter tensor) for per-tensor variants. The buffers of
one call must not overlap (the CPU kernels are compiled on that promise); the ops reject buffers
that overlap in part, while one buffer passed twice (``source`` as ``param`` itself) is fine.
"""
from __future__ import annotations

import torch
from torch import Tensor

from graphsam_ext import _backend
from graphsam_ext.ops import reference

_LIB = "graphsam_ext"


def _native(t: Tensor) -> bool:
    return _backend.use_native(t.device)


def sum_squares(x: Tensor, weight: Tensor | None = None, offsets: Tensor | None = None,
                weight_power: int = 0, shift: float = 0.0) -> Tensor:
    """sum_i (|weight_i|^weight_power * x_i + shift)^2 in float64.

    x, weight: (n,). Returns a 0-dim tensor, or (nseg,) per segment when ``offsets`` is given.
    ``weight_power`` 1 gives ASAM's ||(|theta| * g)||^2, 2 gives ||theta^2 * d||^2.
    """
    if _native(x):
        return torch.ops.graphsam_ext.sum_squares(x, weight, offsets, weight_power, shift)
    return reference.sum_squares(x, weight, offsets, weight_power, shift)


def unscale_sum_squares_(x: Tensor, grad_scale: Tensor, found_inf: Tensor, weight: Tensor | None = None,
                         offsets: Tensor | None = None, weight_power: int = 0, shift: float = 0.0) -> Tensor:
    """Unscale a gradient buffer in place and return its sum of squares, in one pass (fp16 training).

    x <- x * r with r = 1 / grad_scale computed in float64 and rounded to x's dtype once (what
    ``torch.amp.GradScaler.unscale_`` does); then ``sum_squares(x, weight, offsets, weight_power,
    shift)`` of the unscaled x. found_inf (0-dim float32) is set to 1 where a returned sum is not
    finite, and never reset. grad_scale (one element) and found_inf stay on x's device and are read
    and written there: no host synchronization. For float32 x a sum is non-finite exactly when an
    element is (the float64 sum of squares of finite float32 values cannot overflow).
    """
    if _native(x):
        return torch.ops.graphsam_ext.unscale_sum_squares_(x, grad_scale, found_inf, weight, offsets, weight_power,
                                                           shift)
    return reference.unscale_sum_squares_(x, grad_scale, found_inf, weight, offsets, weight_power, shift)


def zero_(x: Tensor) -> None:
    """x <- 0 for a flat buffer; on the CPU, buffers of 4 MiB and more are written with streaming
    stores (they bypass the cache, which a gradient buffer about to be filled by backward does not need)."""
    if _native(x):
        torch.ops.graphsam_ext.zero_(x)
    else:
        x.zero_()


def perturb_(param: Tensor, backup: Tensor, direction: Tensor, scale: Tensor, offsets: Tensor | None = None,
             adaptive: bool = False, skip: Tensor | None = None) -> None:
    """backup <- param; param <- param + scale * direction (adaptive: + scale * param^2 * direction).

    scale: 0-dim, or (nseg,) with ``offsets``. When ``skip`` is true the backup is still taken and
    param is left as it is, so the following restore is always exact.
    """
    if _native(param):
        torch.ops.graphsam_ext.perturb_(param, backup, direction, scale, offsets, adaptive, skip)
    else:
        reference.perturb_(param, backup, direction, scale, offsets, adaptive, skip)


def restore_(param: Tensor, backup: Tensor) -> None:
    """param <- backup, an exact copy (no arithmetic, so no drift)."""
    param.copy_(backup)


def direction_update_(direction: Tensor, grad: Tensor, inv_norm: Tensor, offsets: Tensor | None = None,
                      beta: float = 0.99, init: bool = False, skip: Tensor | None = None) -> Tensor:
    """GraphSAM's EMA of normalized updating gradients, in place; returns ||d||^2 (0-dim float64).

    d <- beta * d + (1 - beta) * g * inv_norm, or d <- g * inv_norm when ``init``.
    inv_norm: 0-dim (global normalization) or (nseg,) per segment.
    """
    if _native(direction):
        return torch.ops.graphsam_ext.direction_update_(direction, grad, inv_norm, offsets, beta, init, skip)
    return reference.direction_update_(direction, grad, inv_norm, offsets, beta, init, skip)


def adam_step_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor,
               source: Tensor | None = None, skip: Tensor | None = None, *, lr: float, beta1: float,
               beta2: float, eps: float, weight_decay: float = 0.0, decoupled: bool = False,
               direction: Tensor | None = None, inv_norm: Tensor | None = None, offsets: Tensor | None = None,
               beta: float = 0.0, direction_sq: Tensor | None = None) -> None:
    """torch.optim.Adam / AdamW update (amsgrad=False, maximize=False) on a flat buffer.

    ``step`` is the already incremented step count (0-dim tensor). With ``source`` the update
    starts from ``source`` (the saved weights) instead of ``param``: restore and update in one pass.
    When ``skip`` is true only the restore happens.

    With ``direction`` the same pass also runs GraphSAM's EMA on the raw gradient, as
    ``direction_update_(direction, grad, inv_norm, offsets, beta)`` would, and adds ||d||^2 to
    ``direction_sq`` (a 0-dim float64 accumulator). ``offsets`` here only split ``inv_norm``.
    """
    args = (param, grad, exp_avg, exp_avg_sq, step, source, skip, lr, beta1, beta2, eps, weight_decay, decoupled,
            direction, inv_norm, offsets, beta, direction_sq)
    if _native(param):
        torch.ops.graphsam_ext.adam_step_(*args)
    else:
        reference.adam_step_(*args)


def sgd_step_(param: Tensor, grad: Tensor, momentum_buffer: Tensor, step: Tensor, source: Tensor | None = None,
              skip: Tensor | None = None, *, lr: float, momentum: float = 0.0, dampening: float = 0.0,
              weight_decay: float = 0.0, nesterov: bool = False, direction: Tensor | None = None,
              inv_norm: Tensor | None = None, offsets: Tensor | None = None, beta: float = 0.0,
              direction_sq: Tensor | None = None) -> None:
    """torch.optim.SGD update (maximize=False) on a flat buffer; the other arguments as in adam_step_.

    On the first step (``step`` <= 1) the momentum buffer is set to the gradient, as in torch.
    """
    args = (param, grad, momentum_buffer, step, source, skip, lr, momentum, dampening, weight_decay, nesterov,
            direction, inv_norm, offsets, beta, direction_sq)
    if _native(param):
        torch.ops.graphsam_ext.sgd_step_(*args)
    else:
        reference.sgd_step_(*args)


def _register_fakes() -> None:
    """Shape functions so the ops trace under torch.compile / torch.export (FakeTensor)."""

    @torch.library.register_fake(f"{_LIB}::sum_squares")
    def _(x, weight, offsets, weight_power, shift):
        if offsets is None:
            return x.new_empty((), dtype=torch.float64)
        return x.new_empty((offsets.shape[0] - 1,), dtype=torch.float64)

    @torch.library.register_fake(f"{_LIB}::unscale_sum_squares_")
    def _(x, grad_scale, found_inf, weight, offsets, weight_power, shift):
        if offsets is None:
            return x.new_empty((), dtype=torch.float64)
        return x.new_empty((offsets.shape[0] - 1,), dtype=torch.float64)

    @torch.library.register_fake(f"{_LIB}::zero_")
    def _(x):
        return None

    @torch.library.register_fake(f"{_LIB}::perturb_")
    def _(param, backup, direction, scale, offsets, adaptive, skip):
        return None

    @torch.library.register_fake(f"{_LIB}::direction_update_")
    def _(direction, grad, inv_norm, offsets, beta, init, skip):
        return direction.new_empty((), dtype=torch.float64)

    @torch.library.register_fake(f"{_LIB}::adam_step_")
    def _(*args):
        return None

    @torch.library.register_fake(f"{_LIB}::sgd_step_")
    def _(*args):
        return None


if _backend.native_library() is not None:
    _register_fakes()
