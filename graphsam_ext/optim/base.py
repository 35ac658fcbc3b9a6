"""The base optimizers a SAM-family optimizer can wrap: one table from name to update.

``BASE_UPDATES`` maps each fused base ("adam", "adamw", "sgd") to a ``BaseUpdate``: its
per-parameter state, hyper-parameter defaults and checks, torch's functional update (the
reference and foreach engines) and the native flat-buffer update (the fused engine). A new base
optimizer is one entry here. Any other ``torch.optim.Optimizer`` class runs through the generic
path (our perturb / restore, then its own ``step``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.optim.adam as torch_adam
import torch.optim.sgd as torch_sgd

from graphsam_ext import ops


def _adam_torch(decoupled: bool):
    def update(params, grads, states, group, foreach):
        beta1, beta2 = group["betas"]
        torch_adam.adam(params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], [],
                        [st["step"] for st in states], foreach=foreach, decoupled_weight_decay=decoupled,
                        amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                        eps=group["eps"], maximize=False)
    return update


def _adam_fused(decoupled: bool):
    def update(param, grad, bufs, step, source, skip, group, fold):
        beta1, beta2 = group["betas"]
        ops.adam_step_(param, grad, bufs["exp_avg"], bufs["exp_avg_sq"], step, source, skip, lr=group["lr"],
                       beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                       decoupled=decoupled, **fold)
    return update


def _sgd_torch(params, grads, states, group, foreach):
    bufs = [st["momentum_buffer"] if float(st["step"]) > 0 else None for st in states]
    torch_sgd.sgd(params, grads, bufs, foreach=foreach, weight_decay=group["weight_decay"],
                  momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                  nesterov=group["nesterov"], maximize=False)
    for st, buf in zip(states, bufs):
        if buf is not None:
            st["momentum_buffer"] = buf
        st["step"] += 1


def _sgd_fused(param, grad, bufs, step, source, skip, group, fold):
    ops.sgd_step_(param, grad, bufs["momentum_buffer"], step, source, skip, lr=group["lr"],
                  momentum=group["momentum"], dampening=group["dampening"], weight_decay=group["weight_decay"],
                  nesterov=group["nesterov"], **fold)


def _check_adam(group: dict) -> None:
    for key in ("lr", "weight_decay", "eps"):
        check_nonnegative(key, group[key])
    b1, b2 = group["betas"]
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas: each must be in [0, 1), got {group['betas']}")


def _check_sgd(group: dict) -> None:
    for key in ("lr", "weight_decay", "momentum", "dampening"):
        check_nonnegative(key, group[key])
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("nesterov: needs momentum > 0 and dampening = 0")


@dataclass(frozen=True)
class BaseUpdate:
    """One base optimizer's update, as every engine runs it.

    state_keys: per-parameter buffers shaped like the parameter (plus a ``step`` count).
    torch_update(params, grads, states, group, foreach): torch's functional update over lists of
        tensors (states: the parameters' state dicts); increments the step counts.
    fused_update(param, grad, bufs, step, source, skip, group, fold): the native update of one
        flat range (bufs: state key -> flat range; step: the already incremented 0-dim count;
        source: the backup to restore from or None; fold: GraphSAM's direction arguments or {}).
    """

    state_keys: tuple
    defaults: dict
    check: Callable[[dict], None]
    torch_update: Callable
    fused_update: Callable


BASE_UPDATES = {
    "adam": BaseUpdate(("exp_avg", "exp_avg_sq"), dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                       _check_adam, _adam_torch(False), _adam_fused(False)),
    "adamw": BaseUpdate(("exp_avg", "exp_avg_sq"), dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
                        _check_adam, _adam_torch(True), _adam_fused(True)),
    "sgd": BaseUpdate(("momentum_buffer",),
                      dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
                      _check_sgd, _sgd_torch, _sgd_fused),
}
FUSED_BASES = tuple(BASE_UPDATES)


@dataclass(frozen=True)
class BaseSpec:
    """name: one of FUSED_BASES, or "generic" with ``cls`` set."""

    name: str
    cls: type | None = None

    @property
    def fused(self) -> bool:
        return self.name in BASE_UPDATES

    @property
    def update(self) -> BaseUpdate | None:
        return BASE_UPDATES.get(self.name)

    @property
    def state_keys(self) -> tuple:
        return self.update.state_keys if self.fused else ()


def parse_base(base_optimizer) -> BaseSpec:
    if isinstance(base_optimizer, str):
        key = base_optimizer.lower()
        if key not in FUSED_BASES:
            raise ValueError(f"base_optimizer: unknown name {base_optimizer!r}; choose one of {FUSED_BASES} "
                             "or pass a torch.optim.Optimizer class")
        return BaseSpec(key)
    if isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
        return BaseSpec("generic", base_optimizer)
    raise TypeError(f"base_optimizer: expected one of {FUSED_BASES} or a torch.optim.Optimizer class, "
                    f"got {base_optimizer!r}")


def base_defaults(spec: BaseSpec, kwargs: dict) -> dict:
    """Validated defaults for the param groups of a fused base; generic bases keep their kwargs."""
    if not spec.fused:
        return dict(kwargs)
    defaults = dict(spec.update.defaults)
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"base optimizer {spec.name!r}: unknown argument(s) {sorted(unknown)}; "
                        f"accepted: {sorted(defaults)}")
    defaults.update(kwargs)
    validate_group(spec, defaults)
    return defaults


def check_nonnegative(name: str, value) -> float:
    """A finite real number >= 0 (NaN and infinity refused: they would only make every step a skip)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def validate_group(spec: BaseSpec, group: dict) -> None:
    if spec.fused:
        spec.update.check(group)
