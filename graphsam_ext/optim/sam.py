"""SAM (Foret et al., 2021) and ASAM (Kwon et al., 2021) over fused flat-buffer kernels."""
from __future__ import annotations

import contextlib

import torch

from graphsam_ext.optim.base import check_nonnegative
from graphsam_ext.optim.family import SAMFamily


class SAM(SAMFamily):
    r"""Sharpness-Aware Minimization around a base optimizer.

    Each step: g = grad L(theta); eps = rho * g / ||g|| (ASAM: rho * theta^2 g / || |theta| g ||);
    w = grad L(theta + eps); theta <- base_update(theta, w) from the restored theta. Norms are over
    every parameter of every group.

    Args:
        params: parameters or param groups.
        base_optimizer: "adam", "adamw", "sgd" (fused) or a ``torch.optim.Optimizer`` class.
        rho: neighbourhood size (>= 0). With rho = 0 a step is exactly the base optimizer's.
        adaptive: ASAM's scale-invariant neighbourhood.
        sam_every: do the SAM step every k-th step and a plain base step otherwise (SAM-k).
        max_grad_norm: clip the updating gradient (the one the base update uses: at theta + eps, or
            at theta on a SAM-k plain step) to this global norm, as ``clip_grad_norm_`` before the
            base step would (None: no clipping). Uses the norm the step computes anyway.
        implementation: "fused" (default where the native library exists and the parameters are
            float32 / float64), "foreach", "reference".
        **base_kwargs: the base optimizer's hyper-parameters (lr, betas, weight_decay, ...).

    ``step(closure)`` zeroes the gradients, evaluates ``closure()`` (forward + backward, returns
    the loss) twice per SAM step (once on a SAM-k plain step), and returns the loss of the last
    evaluation (at theta + eps). ``first_step()`` / ``second_step()`` give the same step in two
    phases for custom loops: compute grads, ``first_step()``, compute grads, ``second_step()``.

    ``perturbation_context``: None, or a callable returning a context manager that the closure call
    giving the perturbation gradient runs in (only that call, and only on SAM steps). Under
    ``DistributedDataParallel``, ``opt.perturbation_context = ddp_model.no_sync`` makes the
    perturbation per replica (the m-sharpness of the SAM paper): each rank perturbs along its own
    gradient, forward and backward of that call inside ``no_sync``, while the updating gradient
    is all-reduced as usual, so every rank restores the same weights and applies the same update.
    A non-finite perturbation gradient then leaves its replica unperturbed for that step instead of
    skipping the step (which only the synchronized updating gradient decides, so all ranks agree).
    """

    perturbation_context = None

    def __init__(self, params, base_optimizer="adam", rho: float = 0.05, adaptive: bool = False,
                 sam_every: int = 1, max_grad_norm: float | None = None, implementation: str | None = None,
                 **base_kwargs):
        rho = check_nonnegative("rho", rho)
        if not isinstance(sam_every, int) or sam_every < 1:
            raise ValueError(f"sam_every: expected an integer >= 1, got {sam_every!r}")
        super().__init__(params, base_optimizer, implementation, {"rho": rho}, base_kwargs)
        self.adaptive = bool(adaptive)
        self.sam_every = sam_every
        self.max_grad_norm = self._check_max_grad_norm(max_grad_norm)
        self.sam_step_count = 0

    # -- two-phase API -----------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self) -> None:
        """Perturb theta along the current gradients (the user has just run backward)."""
        self._require_trainable("first_step")
        self.engine.prepare()
        sq = self.engine.grad_sq(weight_power=1 if self.adaptive else 0)
        skip = self._nonfinite(sq)
        scale = self._inv_norm(sq, self.rho, 1e-12)
        self.engine.perturb("grad", scale, self.adaptive, skip)
        # a replica's own perturbation gradient must not decide a step the others take
        self._pending_skip = skip if self.perturbation_context is None else torch.zeros_like(skip)

    @torch.no_grad()
    def second_step(self) -> None:
        """Restore theta and apply the base update with the gradients at theta + eps."""
        if self._pending_skip is None:
            raise RuntimeError("second_step: call first_step() first")
        self.engine.prepare()
        sq = self.engine.grad_sq()
        skip = self._pending_skip | self._nonfinite(sq)
        self._clip_grad(sq)
        self.engine.base_step(skip, restore=True)
        self._record_skip(skip)
        self._pending_skip = None
        self.sam_step_count += 1

    # -- closure API -----------------------------------------------------------------------
    def _step(self, closure):
        if self.sam_step_count % self.sam_every != 0:
            loss = self._evaluate(closure)
            sq = self.engine.grad_sq()
            skip = self._nonfinite(sq)
            self._clip_grad(sq)
            self.engine.base_step(skip, restore=False)
            self._record_skip(skip)
            self.sam_step_count += 1
            return loss
        local = self.perturbation_context
        shared_inf = self.engine.found_inf
        if local is not None and shared_inf is not None:
            # a replica's own perturbation gradient decides neither the step nor the loss scale
            self.engine.found_inf = torch.zeros_like(shared_inf)
        with local() if local is not None else contextlib.nullcontext():
            self._evaluate(closure)
        self.first_step()
        self.engine.found_inf = shared_inf
        loss = self._evaluate(closure)
        self.second_step()
        return loss

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "sam_step_count": self.sam_step_count}

    def _load_extra_state(self, extra: dict) -> None:
        super()._load_extra_state(extra)
        self.sam_step_count = int(extra.get("sam_step_count", 0))
