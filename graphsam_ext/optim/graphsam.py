"""GraphSAM (Wang et al., ICLR 2024): SAM at about the cost of the base optimizer."""
from __future__ import annotations

import math

import torch

from graphsam_ext.optim.base import check_nonnegative
from graphsam_ext.optim.family import SAMFamily

MODES = ("paper", "reference")
RHO_SCHEDULES = ("step", "compounding")


def rho_at_epoch(rho0: float, gamma: float, lam: int, epoch: int, schedule: str = "step") -> float:
    """Neighbourhood size at ``epoch`` (0-based).

    step:        rho0 * gamma ** (epoch // lam)            (the paper)
    compounding: rho is multiplied by gamma ** (e / lam) at every e divisible by lam, e >= lam,
                 i.e. rho0 * gamma ** (m (m + 1) / 2) after m updates (the released code)
    """
    m = epoch // lam
    if schedule == "step":
        return rho0 * gamma ** m
    if schedule == "compounding":
        return rho0 * gamma ** (m * (m + 1) / 2)
    raise ValueError(f"rho_schedule: expected one of {RHO_SCHEDULES}, got {schedule!r}")


class GraphSAM(SAMFamily):
    r"""GraphSAM: the perturbation re-uses an EMA of the previous steps' updating gradients.

    At the first step of each epoch an exact gradient g gives d = g / ||g|| (one extra closure
    call); at every other step d <- beta d + (1 - beta) w_{t-1} / ||w_{t-1}||. The step then
    evaluates w_t = grad L(theta + rho d / ||d||) once, restores theta and applies the base update
    with w_t. rho follows rho0 * gamma ** (epoch // lam). Cost: T + 1 closure calls per epoch.

    Args:
        params, base_optimizer, implementation, **base_kwargs: as for ``SAM``.
        rho: initial neighbourhood size (>= 0); rho = 0 gives exactly the base optimizer.
        beta: EMA smoothing in [0, 1).   gamma: rho decay factor in (0, 1].   lam: decay period (epochs, >= 1).
        steps_per_epoch: when given, epochs start automatically; otherwise call ``start_epoch()``
            at the start of each epoch (the first step starts epoch 0 if you never call it).
        mode: "paper" (default) or "reference": the released research code's behaviour under
            PyTorch 1.x (per-tensor normalization with 1e-8 inside the norm, raw-gradient EMA
            start, adaptive theta^2 perturbation whose per-tensor norm saturates at ``radius``,
            compounding rho / radius schedule). Individual knobs below override the mode.
        normalization: "global" or "per_tensor" normalization of w inside the EMA.
        adaptive: ASAM-style theta^2 scaling of the perturbation.
        radius: per-tensor clip of the perturbation norm (None: no clip; "reference" mode: rho).
        rho_schedule: "step" or "compounding".
        max_grad_norm: clip the updating gradient w (at theta + eps) to this global norm before the
            base update, as ``clip_grad_norm_`` would (None: no clipping); the EMA still folds in
            w / ||w|| of the unclipped w.

    The two-phase API for custom loops: if ``needs_exact_gradient`` compute grads at theta and
    call ``exact_gradient_step()``; then ``first_step()``; compute grads; ``second_step()``.
    """

    _buffers = ("direction",)
    _ema = True  # fold w / ||w|| into d after each step (SAM-One: no)

    def __init__(self, params, base_optimizer="adam", rho: float = 0.05, beta: float = 0.99, gamma: float = 0.5,
                 lam: int = 1, steps_per_epoch: int | None = None, mode: str = "paper",
                 normalization: str | None = None, adaptive: bool | None = None, radius: float | None = None,
                 rho_schedule: str | None = None, max_grad_norm: float | None = None,
                 implementation: str | None = None, **base_kwargs):
        rho = check_nonnegative("rho", rho)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta: expected a value in [0, 1), got {beta!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma: expected a value in (0, 1], got {gamma!r}")
        if not isinstance(lam, int) or lam < 1:
            raise ValueError(f"lam: expected an integer >= 1 (epochs between rho decays), got {lam!r}")
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch: expected None or an integer >= 1, got {steps_per_epoch!r}")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        ref = mode == "reference"
        normalization = normalization or ("per_tensor" if ref else "global")
        if normalization not in ("global", "per_tensor"):
            raise ValueError(f"normalization: expected 'global' or 'per_tensor', got {normalization!r}")
        rho_schedule = rho_schedule or ("compounding" if ref else "step")
        if rho_schedule not in RHO_SCHEDULES:
            raise ValueError(f"rho_schedule: expected one of {RHO_SCHEDULES}, got {rho_schedule!r}")
        if radius is not None and not radius > 0:
            raise ValueError(f"radius: expected None or a number > 0, got {radius!r}")
        super().__init__(params, base_optimizer, implementation, {"rho": rho}, base_kwargs)
        self.rho0, self.beta, self.gamma, self.lam = float(rho), float(beta), float(gamma), lam
        self.steps_per_epoch = steps_per_epoch
        self.mode = mode
        self.normalization = normalization
        self.adaptive = ref if adaptive is None else bool(adaptive)
        self.raw_start = ref
        self.radius0 = (float(rho) if ref else None) if radius is None else float(radius)
        self.rho_schedule = rho_schedule
        self.max_grad_norm = self._check_max_grad_norm(max_grad_norm)
        self.epoch = -1
        self.step_in_epoch = 0
        self.radius = self.radius0
        self._direction_sq = None
        self._exact_scale = None
        self._saved_direction = None

    _step_attrs = SAMFamily._step_attrs + ("epoch", "step_in_epoch", "rho", "radius", "_direction_sq",
                                           "_exact_scale")

    def _abort_step(self, saved: dict) -> None:
        if self._saved_direction is not None:  # the exact gradient of this step already replaced d
            directions, _ = self._saved_direction
            self.engine.revert_direction(torch.ones((), dtype=torch.bool, device=self._device()), directions)
            self._saved_direction = None
        super()._abort_step(saved)

    def _device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device

    def _rebuild_engine(self) -> None:
        super()._rebuild_engine()
        if self._direction_sq is not None:  # the direction now spans other parameters
            self._direction_sq = self.engine.direction_sq()

    # -- epochs ------------------------------------------------------------------------------
    def start_epoch(self) -> None:
        """Mark the start of an epoch: the next step takes an exact gradient; rho follows its schedule."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.rho = rho_at_epoch(self.rho0, self.gamma, self.lam, self.epoch, self.rho_schedule)
        if self.radius0 is not None:
            self.radius = rho_at_epoch(self.radius0, self.gamma, self.lam, self.epoch, self.rho_schedule)
        self._check_skipped()

    def _maybe_new_epoch(self) -> None:
        if self.epoch < 0 or (self.steps_per_epoch is not None and self.step_in_epoch >= self.steps_per_epoch):
            self.start_epoch()

    @property
    def needs_exact_gradient(self) -> bool:
        """True when the coming step starts an epoch and needs a gradient at theta first."""
        self._maybe_new_epoch()
        return self.step_in_epoch == 0 or self._direction_sq is None

    # -- phases ------------------------------------------------------------------------------
    @torch.no_grad()
    def exact_gradient_step(self) -> None:
        """d <- g / ||g|| from the gradient at theta (the reference mode keeps the raw g)."""
        self._require_trainable("exact_gradient_step")
        self.engine.prepare()
        sq = self.engine.grad_sq()
        skip = self._nonfinite(sq)
        # kept until second_step knows whether the whole step is skipped (once per epoch)
        self._saved_direction = (self.engine.snapshot_direction(), self._direction_sq)
        if self.raw_start:
            inv = torch.ones((), dtype=torch.float64, device=sq.device)
        else:
            inv = self._inv_norm(sq)
        self._direction_sq = self.engine.direction_update(inv, self.beta, True, skip)
        self._exact_scale = None
        if self.adaptive:
            # the released code scales by rho / || |theta| g || of the gradient in hand
            self._exact_scale = self._inv_norm(self.engine.grad_sq(weight_power=1), self.rho, 1e-12)
        self._pending_skip = skip

    @torch.no_grad()
    def first_step(self) -> None:
        """Perturb theta by rho * d / ||d|| (or its adaptive / radius-clipped variant)."""
        if self._saved_direction is None:  # else exact_gradient_step() has just checked
            self._require_trainable("first_step")
        skip = self._pending_skip
        if self._direction_sq is None:
            raise RuntimeError("first_step: no direction yet; compute a gradient and call exact_gradient_step()")
        if self.adaptive:
            base = self._exact_scale
            if base is None:
                # the released code divides by the norm of just-zeroed gradients: the scale is
                # unbounded and each tensor's perturbation saturates at the radius
                base = torch.tensor(math.inf, dtype=torch.float64, device=self._direction_sq.device)
            scale = base
            if self.radius is not None:
                norms = self.engine.direction_sq(weight_power=2, per_tensor=True).sqrt()
                clip = torch.where(norms > 0, self.radius / norms, torch.zeros_like(norms))
                scale = torch.minimum(base.expand_as(clip), clip)
        else:
            scale = self._inv_norm(self._direction_sq, self.rho, 1e-12)
            if self.radius is not None:
                norms = (scale * scale * self.engine.direction_sq(per_tensor=True)).sqrt()
                scale = torch.where(norms > self.radius, scale * self.radius / norms, scale.expand_as(norms))
        if self.rho == 0.0:
            scale = torch.zeros_like(scale)
        self.engine.perturb("direction", scale, self.adaptive, skip)
        self._exact_scale = None

    @torch.no_grad()
    def second_step(self) -> None:
        """Restore theta, base-update with w, and fold w / ||w|| into the direction EMA."""
        self.engine.prepare()
        per_tensor = self.normalization == "per_tensor"
        shift = 1e-8 if self.mode == "reference" and per_tensor else 0.0
        sq = self.engine.grad_sq(shift=shift, per_tensor=per_tensor)
        skip = self._nonfinite(sq)
        if self._pending_skip is not None:
            skip = skip | self._pending_skip
        inv = self._inv_norm(sq)
        if self.max_grad_norm is not None:
            total = sq if not per_tensor and not shift else self.engine.grad_sq()
            coef = self._clip_grad(total)
            inv = inv / coef  # the EMA folds in the clipped gradient: c w / (c ||w||) = w / ||w||
        if self._ema:
            # the EMA of w / ||w|| runs with the restore and base update (one pass in the fused engine)
            self._direction_sq = self.engine.base_step(skip, restore=True, fold=(inv, self.beta))
        else:
            self.engine.base_step(skip, restore=True)
        if self._saved_direction is not None:
            saved, saved_sq = self._saved_direction
            self.engine.revert_direction(skip, saved)
            if saved_sq is None:
                saved_sq = torch.zeros_like(self._direction_sq)
            self._direction_sq = torch.where(skip, saved_sq, self._direction_sq)
            self._saved_direction = None
        self._record_skip(skip)
        self._pending_skip = None
        self.step_in_epoch += 1

    def _step(self, closure):
        if self.needs_exact_gradient:
            self._evaluate(closure)
            self.exact_gradient_step()
        self.first_step()
        loss = self._evaluate(closure)
        self.second_step()
        return loss

    # -- state -------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "rho": self.rho, "radius": self.radius,
                "direction_sq": None if self._direction_sq is None else self._direction_sq.clone()}

    def _load_extra_state(self, extra: dict) -> None:
        super()._load_extra_state(extra)
        self.epoch = int(extra["epoch"])
        self.step_in_epoch = int(extra["step_in_epoch"])
        self.radius = extra["radius"]
        dsq = extra["direction_sq"]
        self._direction_sq = None if dsq is None else dsq.to(self._device())


class SAMOne(GraphSAM):
    r"""SAM-One, the GraphSAM paper's ablation baseline: the exact perturbation gradient of each
    epoch's first step, d = g / ||g||, perturbs every step of that epoch unchanged (GraphSAM with
    beta = 1 and no EMA of the updating gradients).

    Each step evaluates w = grad L(theta + rho d / ||d||) once, restores theta and applies the base
    update with w; an epoch costs T + 1 closure calls, as GraphSAM's. rho follows GraphSAM's
    schedule rho0 * gamma ** (epoch // lam) (gamma = 1 keeps it constant). Arguments as for
    ``GraphSAM`` (without ``beta`` and the reference-mode knobs).
    """

    _ema = False

    def __init__(self, params, base_optimizer="adam", rho: float = 0.05, gamma: float = 0.5, lam: int = 1,
                 steps_per_epoch: int | None = None, max_grad_norm: float | None = None,
                 implementation: str | None = None, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, beta=0.0, gamma=gamma, lam=lam,
                         steps_per_epoch=steps_per_epoch, max_grad_norm=max_grad_norm,
                         implementation=implementation, **base_kwargs)
