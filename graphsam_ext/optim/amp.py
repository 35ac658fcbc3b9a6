"""fp16 training with ``torch.amp.GradScaler`` for the SAM-family optimizers.

A SAM step evaluates the closure more than once, and ``GradScaler.step(optimizer)`` refuses a
``closure`` keyword argument, so the scaler is handed to the step itself::

    scaler = torch.amp.GradScaler(device.type)

    def closure():
        with torch.autocast(device.type, dtype=torch.float16):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        return loss

    loss = optimizer.step(closure, grad_scaler=scaler)
    scaler.update()

The step divides the gradients of every closure call by the scale before anything reads them
(the fused engine in the pass that takes the step's gradient norm) and sets a ``found_inf`` flag
on the device when one is not finite; such a step is skipped whole, by the same device-side skip
as any non-finite gradient norm (parameters and optimizer state unchanged). The flag is then
handed to the scaler as ``scaler.step`` would record it, so ``scaler.update()`` backs the scale
off (or grows it) exactly as for torch's optimizers. Nothing is read back to the host.

This module is the one place that knows how a ``GradScaler`` keeps its per-optimizer record
(``_per_optimizer_states``: a stage and the found_inf tensors ``update()`` consumes); torch has no
public call that records a found_inf computed by the optimizer after the closure.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.amp.grad_scaler import OptState


def _record(scaler, optimizer) -> dict:
    states = getattr(scaler, "_per_optimizer_states", None)
    if states is None:
        raise RuntimeError(f"grad_scaler: this torch ({torch.__version__}) GradScaler keeps no per-optimizer state "
                           "where the step could record its found_inf; use a torch whose GradScaler has "
                           "_per_optimizer_states (2.x)")
    return states[id(optimizer)]


def begin_step(scaler, optimizer, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """(grad_scale, found_inf) for a step with ``scaler`` on ``device``, or None without scaling.

    grad_scale: the scaler's current scale as a 0-dim float32 tensor on ``device`` (no host read);
    found_inf: a fresh 0-dim float32 zero there.
    """
    if scaler is None:
        return None
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"grad_scaler: expected a torch.amp.GradScaler or None, got {type(scaler).__name__}")
    if not scaler.is_enabled():
        return None
    stage = _record(scaler, optimizer)["stage"]
    if stage is not OptState.READY:
        what = "unscale_(optimizer)" if stage is OptState.UNSCALED else "a step"
        raise RuntimeError(f"grad_scaler: {what} already ran for this optimizer since the last scaler.update(); "
                           "call scaler.update() after each optimizer.step(closure, grad_scaler=scaler), and do not "
                           "call scaler.unscale_(optimizer): the step unscales every closure call's gradients itself")
    grad_scale = scaler.scale(torch.ones((), dtype=torch.float32, device=device))
    return grad_scale, torch.zeros((), dtype=torch.float32, device=device)


def finish_step(scaler, optimizer, found_inf: Tensor) -> None:
    """Record the step's found_inf with the scaler, as ``scaler.step(optimizer)`` does, so that
    ``scaler.update()`` backs off (found_inf = 1) or counts towards growth (0)."""
    record = _record(scaler, optimizer)
    record["found_inf_per_device"] = {found_inf.device: found_inf}
    record["stage"] = OptState.STEPPED
