"""Learning-rate schedules, stepped once per optimizer step.

* ``paper``: the protocol of the GraphSAM reference code (a Noam-style schedule): linear warm-up
  from ``init_lr`` to ``max_lr`` over ``warmup_epochs``, then exponential decay that reaches
  ``final_lr`` at ``decay_epochs``, then flat at ``final_lr``. It does not depend on the total
  number of epochs, so extending a run keeps the schedule it already followed.
* ``cosine``: linear warm-up to ``max_lr`` over ``warmup_epochs``, then half a cosine down to
  ``final_lr`` at the last step of the run.
* ``constant``: ``max_lr`` throughout.

All are closed-form functions of the step count, so a scheduler restored from ``state_dict``
continues exactly.
"""
from __future__ import annotations

import math

from torch.optim.lr_scheduler import LRScheduler

SCHEDULE_NAMES = ("paper", "cosine", "constant")


def lr_at(
    step: int,
    *,
    schedule: str,
    steps_per_epoch: int,
    max_lr: float,
    init_lr: float,
    final_lr: float,
    warmup_epochs: float,
    decay_epochs: float,
    total_epochs: int,
) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    if schedule not in SCHEDULE_NAMES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}; got {schedule!r}")
    if schedule == "constant":
        return max_lr
    warmup = max(int(round(warmup_epochs * steps_per_epoch)), 0)
    if step < warmup:
        return init_lr + (max_lr - init_lr) * step / warmup
    if schedule == "paper":
        decay_steps = max(int(round(decay_epochs * steps_per_epoch)) - warmup, 1)
        t = min(step - warmup, decay_steps)
        return max_lr * (final_lr / max_lr) ** (t / decay_steps)
    total = max(total_epochs * steps_per_epoch - warmup, 1)
    t = min(step - warmup, total)
    return final_lr + 0.5 * (max_lr - final_lr) * (1.0 + math.cos(math.pi * t / total))


class StepSchedule(LRScheduler):
    """A torch LR scheduler whose rate is :func:`lr_at` of the number of ``step()`` calls.

    Every param group gets the same rate. Call ``step()`` after each ``optimizer.step()``.
    """

    def __init__(self, optimizer, *, schedule: str, steps_per_epoch: int, max_lr: float,
                 init_lr: float | None = None, final_lr: float | None = None,
                 warmup_epochs: float = 2.0, decay_epochs: float = 30.0, total_epochs: int = 1):
        if schedule not in SCHEDULE_NAMES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}; got {schedule!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        for name, value in (("max_lr", max_lr), ("init_lr", init_lr), ("final_lr", final_lr)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.kwargs = dict(
            schedule=schedule,
            steps_per_epoch=int(steps_per_epoch),
            max_lr=float(max_lr),
            init_lr=float(init_lr if init_lr is not None else max_lr / 10),
            final_lr=float(final_lr if final_lr is not None else max_lr / 10),
            warmup_epochs=float(warmup_epochs),
            decay_epochs=float(decay_epochs),
            total_epochs=int(total_epochs),
        )
        super().__init__(optimizer)

    def get_lr(self):
        lr = lr_at(max(self.last_epoch, 0), **self.kwargs)
        return [lr for _ in self.optimizer.param_groups]
