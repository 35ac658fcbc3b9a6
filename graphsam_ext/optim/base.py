"""The base optimizers a SAM-family optimizer can wrap, and their hyper-parameters.

"adam", "adamw" and "sgd" get fused restore-and-update kernels; any other
``torch.optim.Optimizer`` class runs through the generic path (our perturb / restore, then its
own ``step``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FUSED_BASES = ("adam", "adamw", "sgd")

_DEFAULTS = {
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
    "sgd": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
}


@dataclass(frozen=True)
class BaseSpec:
    """name: one of FUSED_BASES, or "generic" with ``cls`` set."""

    name: str
    cls: type | None = None

    @property
    def fused(self) -> bool:
        return self.name in FUSED_BASES


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
    defaults = dict(_DEFAULTS[spec.name])
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
    if not spec.fused:
        return
    for key in ("lr", "weight_decay") + (("eps",) if spec.name in ("adam", "adamw") else ("momentum", "dampening")):
        check_nonnegative(key, group[key])
    if spec.name in ("adam", "adamw"):
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: each must be in [0, 1), got {group['betas']}")
    elif group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("nesterov: needs momentum > 0 and dampening = 0")
