"""Our SAM-family optimizers under Lightning's automatic optimization.

Lightning already drives an optimizer that takes a closure: ``optimizer.step(closure)``, where
the closure runs ``training_step``, ``optimizer.zero_grad()`` and the backward pass (and, when
the Trainer clips gradients, the clipping right after the backward). SAM calls it twice per
step, GraphSAM once inside an epoch and twice at an epoch's first step. What Lightning cannot
know is where GraphSAM's epochs start, and a few Trainer settings cannot be right with an
optimizer that re-evaluates the loss. :class:`SAMCallback` handles both::

    trainer = lightning.pytorch.Trainer(max_epochs=30, callbacks=[SAMCallback()])

- at each training epoch's start it calls ``start_epoch()`` of every GraphSAM / SAM-One
  optimizer, so the exact gradient lands on the epoch's first step and rho follows its schedule
  (a run resumed inside an epoch continues that epoch);
- at the start of training it refuses, with a :class:`~graphsam_ext.errors.UserError`:
  ``accumulate_grad_batches > 1`` (the optimizer zeroes the gradients before each evaluation,
  so the accumulated batches would be dropped silently), ``precision="16-mixed"`` (Lightning's
  GradScaler runs the closure itself and then steps without one), precision plugins other than
  Lightning's plain, double, half and bf16-mixed ones (untested), and a GraphSAM built with
  ``steps_per_epoch`` (two sources of epoch boundaries).

``gradient_clip_val`` works: Lightning clips after every backward inside the closure, so each
evaluation's gradient is clipped, the one that perturbs and the one that updates (tested).
``import graphsam_ext`` does not import this module; this module imports Lightning.
"""
from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.plugins import precision as lp

from graphsam_ext.errors import UserError
from graphsam_ext.optim.family import SAMFamily
from graphsam_ext.optim.graphsam import GraphSAM

__all__ = ["SAMCallback", "check_trainer", "start_epochs"]

_PLAIN_PRECISION = ("Precision", "DoublePrecision", "HalfPrecision", "MixedPrecision")


def _ours(optimizers) -> list:
    return [opt for opt in optimizers if isinstance(opt, SAMFamily)]


def check_trainer(trainer: "pl.Trainer", optimizers=None) -> None:
    """Refuse the Trainer settings that cannot be right with our optimizers (see the module
    docstring); ``optimizers`` defaults to the Trainer's. Does nothing without one of ours."""
    ours = _ours(trainer.optimizers if optimizers is None else optimizers)
    if not ours:
        return
    names = ", ".join(sorted({type(opt).__name__ for opt in ours}))
    module = trainer.lightning_module
    automatic = module is None or module.automatic_optimization
    if automatic and trainer.accumulate_grad_batches > 1:
        raise UserError(
            f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}): {names} zeroes the gradients before "
            "each evaluation of the closure, so the batches Lightning accumulates would be dropped; use "
            "accumulate_grad_batches=1 with a larger batch_size instead")
    plugin = trainer.precision_plugin
    kind = type(plugin).__name__
    if getattr(plugin, "scaler", None) is not None:
        raise UserError(
            f"Trainer(precision={trainer.precision!r}): Lightning's GradScaler runs the closure itself and then steps "
            f"{names} without one, which cannot re-evaluate the loss; use precision='bf16-mixed' (no scaler), "
            "'32-true' or '64-true'")
    if not isinstance(plugin, lp.Precision) or kind not in _PLAIN_PRECISION:
        raise UserError(
            f"Trainer precision plugin {kind}: not supported with {names} (only Lightning's plain, double, half and "
            "bf16-mixed precision are); pass precision='32-true', '64-true', 'bf16-mixed', 'bf16-true' or '16-true'")
    for opt in ours:
        if isinstance(opt, GraphSAM) and opt.steps_per_epoch is not None:
            raise UserError(
                f"{type(opt).__name__}(steps_per_epoch={opt.steps_per_epoch}) under SAMCallback: the epochs would be "
                "marked twice; build the optimizer without steps_per_epoch (the callback takes the epoch boundaries "
                "from Lightning)")


def start_epochs(trainer: "pl.Trainer", optimizers=None) -> None:
    """Bring every GraphSAM-like optimizer to the Trainer's current epoch (``start_epoch()``
    once per epoch it is behind; none when a resumed optimizer is already inside this epoch)."""
    epoch = int(trainer.current_epoch)
    for opt in _ours(trainer.optimizers if optimizers is None else optimizers):
        if not isinstance(opt, GraphSAM):
            continue
        if opt.epoch > epoch:
            raise UserError(
                f"{type(opt).__name__} is at epoch {opt.epoch} but the Trainer starts epoch {epoch}: the optimizer "
                "state comes from a later run; resume the Trainer from the checkpoint that holds this optimizer "
                "state, or build a fresh optimizer")
        while opt.epoch < epoch:
            opt.start_epoch()


class SAMCallback(pl.Callback):
    """Lightning callback for our SAM-family optimizers: GraphSAM's epoch boundaries from the
    Trainer, and a clear refusal of the settings listed in the module docstring."""

    def on_train_start(self, trainer, pl_module) -> None:
        check_trainer(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        start_epochs(trainer)
