"""AE-SAM (Jiang et al., "An Adaptive Policy to Employ Sharpness-Aware Minimization", ICLR 2023)."""
from __future__ import annotations

import math

import torch

from graphsam_ext.optim.base import check_nonnegative
from graphsam_ext.optim.engines import GRAD
from graphsam_ext.optim.family import SAMFamily

DECISIONS = ("device", "host")


class AESAM(SAMFamily):
    r"""AE-SAM: a SAM step only where the loss surface looks sharp, judged by the squared
    gradient norm against its running statistics; a plain base step otherwise.

    Each step: g = grad L(theta), s = ||g||^2; the running mean and variance of s are updated
    with the EMA constant ``delta`` (mu <- delta mu + (1 - delta) s,
    var <- delta var + (1 - delta) (s - mu)^2, with the updated mu; the first step sets mu = s,
    var = 0). The step is a SAM step when s >= mu + c sqrt(var): perturb by rho g / ||g||,
    evaluate w = grad L(theta + eps), restore and update with w; otherwise the base update uses g.

    The paper uses delta = 0.9 and schedules c linearly over training between two tuned
    bounds; here c is a constant (default 0.0: SAM where s is at or above its running mean), an
    attribute a schedule may change between steps. delta's default is the paper's 0.9.

    decision: where the SAM / base choice is acted on.
        "device": no host synchronization. The choice stays a 0/1 tensor that multiplies the
            perturbation, so the second closure call always happens (2 per step, SAM's cost);
            on a base step it evaluates the gradient at theta + 0, which the update then uses.
        "host": the choice is read once per step (``bool``), and a base step makes no second
            closure call (1 + the SAM fraction per step). On a GPU that read is one device
            synchronization per step; on the CPU it costs nothing.
        None (default): "host" for parameters on the CPU, "device" elsewhere.

    Args:
        params, base_optimizer, implementation, **base_kwargs: as for ``SAM``.
        rho: neighbourhood size (>= 0), the param groups' ``rho`` entry.
        delta: EMA constant of the statistics, in [0, 1).   c: threshold in running standard deviations.

    ``sam_steps`` counts the SAM steps taken (a device value; reading it syncs on GPUs).
    """

    def __init__(self, params, base_optimizer="adam", rho: float = 0.05, delta: float = 0.9, c: float = 0.0,
                 decision: str | None = None, implementation: str | None = None, **base_kwargs):
        rho = check_nonnegative("rho", rho)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta < 1.0:
            raise ValueError(f"delta: expected an EMA constant in [0, 1), got {delta!r}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ValueError(f"c: expected a finite number of standard deviations, got {c!r}")
        if decision is not None and decision not in DECISIONS:
            raise ValueError(f"decision: expected None or one of {DECISIONS}, got {decision!r}")
        super().__init__(params, base_optimizer, implementation, {"rho": rho}, base_kwargs)
        self.delta, self.c = float(delta), float(c)
        device = self.param_groups[0]["params"][0].device
        self.decision = decision or ("host" if device.type == "cpu" else "device")
        # running statistics of ||g||^2 and the counts, float64 on the device
        self._stats = torch.zeros(4, dtype=torch.float64, device=device)  # mean, var, steps seen, SAM steps

    _step_attrs = SAMFamily._step_attrs + ("_stats",)

    @property
    def sam_steps(self) -> int:
        return int(self._stats[3])

    def _new_stats(self, sq: torch.Tensor) -> tuple:
        """The statistics after this step's ||g||^2 and the SAM choice (0-dim bool)."""
        mean, var, seen, sam = self._stats.unbind()
        first = seen == 0
        new_mean = torch.where(first, sq, self.delta * mean + (1.0 - self.delta) * sq)
        new_var = torch.where(first, torch.zeros_like(var),
                              self.delta * var + (1.0 - self.delta) * (sq - new_mean) ** 2)
        choose = sq >= new_mean + self.c * new_var.sqrt()
        return torch.stack([new_mean, new_var, seen + 1.0, sam + choose.double()]), choose

    def _step(self, closure):
        loss = self._evaluate(closure)
        engine = self.engine
        sq = engine.grad_sq()
        skip = self._nonfinite(sq)
        stats, choose = self._new_stats(sq)
        if self.decision == "host" and not bool(choose):
            engine.base_step(skip, restore=False)
        else:
            scale = self._inv_norm(sq, self.rho, 1e-12)
            if self.decision == "device":
                scale = scale * choose.to(scale.dtype)
            engine.perturb(GRAD, scale, False, skip)
            loss = self._evaluate(closure)
            skip = skip | self._nonfinite(engine.grad_sq())
            engine.base_step(skip, restore=True)
        self._stats = torch.where(skip, self._stats, stats)  # a skipped step leaves them as they were
        self._record_skip(skip)
        return loss

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "ae_stats": self._stats.clone()}

    def _load_extra_state(self, extra: dict) -> None:
        super()._load_extra_state(extra)
        if "ae_stats" in extra:
            self._stats = extra["ae_stats"].to(self._stats.device, torch.float64).clone()
