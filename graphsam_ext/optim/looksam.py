"""LookSAM (Liu et al., "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR 2022)."""
from __future__ import annotations

import torch

from graphsam_ext.optim.base import check_nonnegative
from graphsam_ext.optim.engines import GRAD, Term
from graphsam_ext.optim.family import SAMFamily


class LookSAM(SAMFamily):
    r"""LookSAM: an exact SAM step every k-th step; in between, the base gradient plus the SAM
    gradient's stored orthogonal component.

    At steps 0, k, 2k, ...: g = grad L(theta), g_s = grad L(theta + rho g / ||g||), the component of
    g_s orthogonal to g, g_v = g_s - ||g_s|| cos(g, g_s) g / ||g|| = g_s - (<g, g_s> / ||g||^2) g, is
    stored as a unit vector u = g_v / ||g_v||, and the base update uses g_s (from the restored
    theta). At the other steps: one evaluation g = grad L(theta) and the base update uses
    g + alpha ||g|| u (the paper's g + alpha (||g|| / ||g_v||) g_v). Norms are over the whole
    model. Closure calls: 2 at an exact step, 1 otherwise (k + 1 per k steps).

    A zero g or g_v gives u = 0 (never NaN). With rho = 0, g_s = g and u = 0, so every step is the
    base optimizer's.

    Args:
        params, base_optimizer, implementation, **base_kwargs: as for ``SAM``.
        rho: neighbourhood size (>= 0), the param groups' ``rho`` entry.
        k: period of the exact SAM steps (>= 1; k = 1 is SAM).
        alpha: weight of the orthogonal component (>= 0; the paper's default 0.7).

    State: ``orthogonal`` (u, per parameter) and the step counter ``look_step_count``.
    """

    _buffers = ("orthogonal",)
    _step_attrs = SAMFamily._step_attrs + ("look_step_count",)

    def __init__(self, params, base_optimizer="adam", rho: float = 0.05, k: int = 5, alpha: float = 0.7,
                 implementation: str | None = None, **base_kwargs):
        rho = check_nonnegative("rho", rho)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected an integer >= 1 (steps between exact SAM steps), got {k!r}")
        self.alpha = check_nonnegative("alpha", alpha)
        self.k = k
        super().__init__(params, base_optimizer, implementation, {"rho": rho}, base_kwargs)
        self.look_step_count = 0
        self._saved_orthogonal = None

    @property
    def next_step_is_exact(self) -> bool:
        return self.look_step_count % self.k == 0

    def _abort_step(self, saved: dict) -> None:
        if self._saved_orthogonal is not None:
            self.engine.revert("orthogonal", torch.ones((), dtype=torch.bool, device=self._device()),
                               self._saved_orthogonal)
            self._saved_orthogonal = None
        super()._abort_step(saved)

    def _device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device

    def _step(self, closure):
        loss = self._evaluate(closure)
        engine = self.engine
        sq = engine.grad_sq()
        skip = self._nonfinite(sq)
        one = torch.ones((), dtype=torch.float64, device=sq.device)
        if not self.next_step_is_exact:
            # g + alpha ||g|| u, in the gradient buffers the base update reads
            engine.combine(GRAD, [Term(one, GRAD), Term(self.alpha * sq.sqrt(), "orthogonal")])
            engine.base_step(skip, restore=False)
        else:
            rho = self.rho
            engine.perturb(GRAD, self._inv_norm(sq, rho, 1e-12), False, skip)
            self._saved_orthogonal = engine.snapshot("orthogonal")
            engine.combine("orthogonal", [Term(one, GRAD)])  # keeps g while the closure refills the gradients
            loss = self._evaluate(closure)
            skip = skip | self._nonfinite(engine.grad_sq())
            if rho == 0.0:  # g_s = g: no orthogonal component (rounding would make one up)
                engine.combine("orthogonal", [Term(torch.zeros_like(one), "orthogonal")])
            else:
                coef = self._inv_norm(sq) ** 2 * engine.dot(GRAD, "orthogonal")  # <g, g_s> / ||g||^2
                engine.combine("orthogonal", [Term(one, GRAD), Term(-coef, "orthogonal")], wide=True)
                engine.combine("orthogonal", [Term(self._inv_norm(engine.sum_squares("orthogonal")), "orthogonal")])
            engine.revert("orthogonal", skip, self._saved_orthogonal)
            self._saved_orthogonal = None
            engine.base_step(skip, restore=True)
        self._record_skip(skip)
        self.look_step_count += 1
        return loss

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "look_step_count": self.look_step_count}

    def _load_extra_state(self, extra: dict) -> None:
        super()._load_extra_state(extra)
        self.look_step_count = int(extra.get("look_step_count", 0))
