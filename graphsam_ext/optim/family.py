"""Machinery shared by the SAM-family optimizers: construction, engines, closures, state."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from graphsam_ext import _backend
from graphsam_ext.optim import amp
from graphsam_ext.optim.base import BaseSpec, base_defaults, check_nonnegative, parse_base, validate_group
from graphsam_ext.optim.engines import ENGINES, GRAD, Term
from graphsam_ext.optim.flat import FLAT_DTYPES

IMPLEMENTATIONS = tuple(ENGINES)


class SAMFamily(torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose step perturbs, re-evaluates, restores, updates.

    Subclasses implement ``_step(closure)``; they talk to the parameters only through
    ``self.engine``, whose verbs ``graphsam_ext.optim.engines.interface.Engine`` documents, and
    name the per-parameter state buffers they need in ``_buffers``. A step that raises puts back
    the attributes named in ``_step_attrs`` (and what ``_abort_step`` restores) and the weights.
    """

    # per-parameter state buffers the subclass works with, besides the base optimizer's
    _buffers: tuple = ()

    def __init__(self, params, base_optimizer, implementation, extra_defaults: dict, base_kwargs: dict):
        """extra_defaults: param-group entries of the SAM variant (``rho`` at least)."""
        self.base_spec: BaseSpec = parse_base(base_optimizer)
        defaults = base_defaults(self.base_spec, base_kwargs) if self.base_spec.fused else {}
        self.base_optimizer = None
        super().__init__(params, {**defaults, **extra_defaults})
        if not self.base_spec.fused:
            self.base_optimizer = self.base_spec.cls(self.param_groups, **base_kwargs)
            # share the groups so LR schedulers attached to this optimizer drive the base one; the
            # state stays apart (a base that sets its state up when it finds it empty, as most of
            # torch's do, must not find GraphSAM's direction there)
            self.param_groups = self.base_optimizer.param_groups
        self.implementation = self._choose_implementation(implementation)
        self.engine = ENGINES[self.implementation](self, self._buffers)
        self._engine_trainable = self._trainable()
        self.closure_calls = 0
        self._pending_skip = None
        self._skipped = None
        self._warned_skip = False

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group, also after construction (e.g. when unfreezing layers).

        Its parameters start with fresh state (zero moments, zero GraphSAM direction, step 0);
        every other parameter keeps its state. The engine is rebuilt, so the fused buffers are laid
        out anew: allowed between steps, not between ``first_step()`` and ``second_step()``.
        """
        engine = getattr(self, "engine", None)
        if engine is not None and engine.perturbed:
            raise RuntimeError("add_param_group: the parameters are perturbed (first_step() ran without "
                               "second_step()); add the group after second_step()")
        if engine is not None and "rho" not in param_group:
            param_group = {**param_group, "rho": self.rho}  # the rho in use (GraphSAM's decayed one)
        if self.base_optimizer is not None:
            # the groups list is shared: the base optimizer appends the group with its own defaults
            self.base_optimizer.add_param_group(param_group)
            for key, value in self.defaults.items():
                self.param_groups[-1].setdefault(key, value)
        else:
            super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
            if engine is not None:
                self._rebuild_engine()
        except Exception:
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict) -> None:
        validate_group(self.base_spec, group)
        check_nonnegative("rho", group["rho"])
        for p in group["params"]:
            if not p.is_floating_point() or p.is_complex():
                raise TypeError(f"params: only real floating-point parameters are supported, got {p.dtype}")
            if p.is_sparse:
                raise ValueError("params: sparse parameters are not supported")

    def _rebuild_engine(self) -> None:
        """A new engine over the current groups, with the state of the parameters it already had."""
        saved = {p: dict(st) for p, st in self.state.items()}  # keeps the old buffers alive
        engine = ENGINES[self.implementation](self, self._buffers)
        for p, st in saved.items():
            self.state[p].update(st)
        engine.adopt_loaded_state()
        kept = {id(p) for p in engine.params}
        self.engine.release([p for p in self.engine.params if id(p) not in kept])
        self.engine = engine
        self._engine_trainable = self._trainable()

    # -- rho, a param-group entry -------------------------------------------------------------
    @property
    def rho(self) -> float:
        """The neighbourhood size of the coming step: the ``rho`` entry of the param groups, which
        schedulers may drive as they drive ``lr``. The perturbation is one vector over the whole
        model, so every group must hold the same value."""
        values = {group["rho"] for group in self.param_groups}
        if len(values) > 1:
            raise ValueError(f"rho: the param groups hold different values {sorted(values)}; the perturbation "
                             "spans every group, so set the same rho in each (a scheduler driving rho must "
                             "set every group)")
        return check_nonnegative("rho", values.pop())

    @rho.setter
    def rho(self, value: float) -> None:
        value = check_nonnegative("rho", value)
        for group in self.param_groups:
            group["rho"] = value

    def _trainable(self) -> tuple:
        return tuple(p.requires_grad for group in self.param_groups for p in group["params"])

    def _sync_engine(self) -> bool:
        """At the start of a step: engines hold only parameters that require grad (as torch's
        optimizers skip the others, weight decay included), so freezing or unfreezing one since
        the engine was built rebuilds it, keeping every parameter's state. Returns whether any
        parameter requires grad."""
        if self._trainable() != self._engine_trainable:
            self._rebuild_engine()
        return bool(self.engine.params)

    def _require_trainable(self, phase: str) -> None:
        if not self._sync_engine():
            raise RuntimeError(f"{phase}: no parameter of this optimizer requires grad")

    def _choose_implementation(self, implementation) -> str:
        device = self.param_groups[0]["params"][0].device
        if implementation is None:
            flat = all(p.dtype in FLAT_DTYPES for g in self.param_groups for p in g["params"])
            return "fused" if flat and _backend.use_native(device) else "foreach"
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}")
        return implementation

    # -- closures --------------------------------------------------------------------------
    def _evaluate(self, closure) -> Tensor:
        """Zero the gradients, run the closure with grad enabled, and adopt its gradients (unscaled
        in a step with a GradScaler)."""
        self.engine.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.closure_calls += 1
        self.engine.prepare()
        if self.engine.grad_scale is not None:
            self.engine.unscale()
        return loss

    @staticmethod
    def _require_closure(closure) -> None:
        if closure is None:
            raise ValueError("closure: SAM-family optimizers re-evaluate the loss; pass step(closure) where "
                             "closure() runs forward + loss.backward() and returns the loss")
        if not callable(closure):
            raise TypeError(f"closure: expected a callable, got {type(closure).__name__}")

    # torch.amp.GradScaler.step(optimizer, closure) hands itself to step() as ``grad_scaler``
    # (with a FutureWarning of torch's) instead of unscaling gradients the closure has not made yet
    _step_supports_amp_scaling = True

    @torch.no_grad()
    def step(self, closure=None, grad_scaler=None):
        """Run a full step; the closure is evaluated here (see the class docstring for how often).

        grad_scaler: a ``torch.amp.GradScaler`` whose ``scale(loss)`` the closure backpropagates
            (fp16 training). Every closure call's gradients are unscaled before the step reads them,
            a non-finite one skips the whole step, and the scaler records the step's found_inf, so
            call ``scaler.update()`` after the step (``graphsam_ext.optim.amp``). No host sync.

        With every parameter frozen (none requires grad) the closure runs once and nothing is
        updated, as torch's optimizers leave such parameters alone.
        """
        self._require_closure(closure)
        scaling = amp.begin_step(grad_scaler, self, self.param_groups[0]["params"][0].device)
        if not self._sync_engine():
            loss = self._evaluate(closure)
            if scaling is not None:
                amp.finish_step(grad_scaler, self, scaling[1])
            return loss
        saved = self._save_step_state()
        if scaling is not None:
            self.engine.grad_scale, self.engine.found_inf = scaling
        try:
            loss = self._step(closure)
        except BaseException:
            # a closure that raises (out of memory on one batch, KeyboardInterrupt): the weights
            # are restored and the optimizer is left as it was before the step, so a loop that
            # catches the exception and goes on trains from the unperturbed point
            self._abort_step(saved)
            raise
        finally:
            self.engine.grad_scale = self.engine.found_inf = None
        if scaling is not None:
            amp.finish_step(grad_scaler, self, scaling[1])
        return loss

    def _step(self, closure):
        raise NotImplementedError

    # attributes a step changes before its last closure call; put back when the step raises
    _step_attrs = ("closure_calls", "_pending_skip")

    def _save_step_state(self) -> dict:
        return {name: getattr(self, name) for name in self._step_attrs}

    def _abort_step(self, saved: dict) -> None:
        if self.engine.perturbed:
            self.engine.restore()
        for name, value in saved.items():
            setattr(self, name, value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place (they are views into flat buffers in the fused path)."""
        self.engine.zero_grad()

    # -- clipping ------------------------------------------------------------------------------
    max_grad_norm = None  # set by the subclasses that take ``max_grad_norm``

    @staticmethod
    def _check_max_grad_norm(value):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"max_grad_norm: expected None or a number > 0, got {value!r}")
        return float(value)

    def _clip_grad(self, sq: Tensor) -> Tensor | None:
        """Scale the updating gradient to global norm at most ``max_grad_norm`` (torch's
        ``clip_grad_norm_``: coefficient max_norm / (norm + 1e-6), at most 1), from the norm the step
        has already computed. Returns the coefficient (0-dim, on the device; None without
        clipping); one element-wise pass over the gradients, no host read."""
        if self.max_grad_norm is None:
            return None
        coef = torch.clamp(self.max_grad_norm / (sq.sqrt() + 1e-6), max=1.0)
        coef = torch.where(torch.isfinite(sq), coef, torch.ones_like(coef))  # a skipped step: left alone
        self.engine.combine(GRAD, [Term(coef, GRAD)])
        return coef

    # -- zero and non-finite norms -----------------------------------------------------------------
    @staticmethod
    def _inv_norm(sq: Tensor, numerator: float = 1.0, eps: float = 0.0) -> Tensor:
        """numerator / (sqrt(sq) + eps), and 0 where sq is 0: a zero vector contributes nothing and
        perturbs nothing (never 0 * inf = NaN). Element-wise on the device, no host read; a
        non-finite sq gives 0 here and skips the step through ``_nonfinite``."""
        return torch.where(sq > 0, numerator / (sq.sqrt() + eps), torch.zeros_like(sq))

    @staticmethod
    def _nonfinite(sq: Tensor) -> Tensor:
        return ~torch.isfinite(sq.sum() if sq.dim() else sq)

    def _record_skip(self, skip: Tensor) -> None:
        self._skipped = skip.long() if self._skipped is None else self._skipped + skip.long()
        if skip.device.type == "cpu":
            self._check_skipped()

    def _check_skipped(self) -> None:
        """Warn once when a step was skipped; reads a device value, so it runs at epoch boundaries on GPUs."""
        if not self._warned_skip and self._skipped is not None and int(self._skipped) > 0:
            self._warned_skip = True
            warnings.warn(f"{type(self).__name__}: a gradient norm was not finite; the step was skipped "
                          "(parameters and state unchanged). `optimizer.skipped_steps` counts them.",
                          RuntimeWarning, stacklevel=3)

    @property
    def skipped_steps(self) -> int:
        """How many steps were skipped because of a non-finite gradient norm (syncs on GPUs)."""
        self._check_skipped()
        return 0 if self._skipped is None else int(self._skipped)

    # -- state -----------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"closure_calls": self.closure_calls, "skipped": self.skipped_steps}

    def _load_extra_state(self, extra: dict) -> None:
        self.closure_calls = int(extra.get("closure_calls", 0))
        skipped = int(extra.get("skipped", 0))
        self._skipped = torch.tensor(skipped) if skipped else None

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["sam_family"] = self._extra_state()
        if self.base_optimizer is not None:
            sd["sam_family"]["base_optimizer"] = self.base_optimizer.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        if "sam_family" not in state_dict:
            raise ValueError(f"state_dict: not a {type(self).__name__} state dict (no 'sam_family' entry)")
        extra = state_dict["sam_family"]
        if self.base_optimizer is not None and "base_optimizer" not in extra:
            raise ValueError(f"state_dict: no state of the base optimizer {type(self.base_optimizer).__name__} "
                             "(saved from an optimizer with a fused base, 'adam' / 'adamw' / 'sgd'?)")
        rho = self.rho
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "sam_family"})
        for group in self.param_groups:  # saved before rho was a group entry: the saved or current rho
            group.setdefault("rho", extra.get("rho", rho))
        if self.base_optimizer is not None:
            self.base_optimizer.load_state_dict(extra["base_optimizer"])
            self.base_optimizer.param_groups = self.param_groups
        self._load_extra_state(extra)
        self.engine.adopt_loaded_state()
