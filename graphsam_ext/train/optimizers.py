"""Optimizers by name, so the CLI, the trainer and the results all speak the same names.

| name          | what it is                                                                   |
| ------------- | ---------------------------------------------------------------------------- |
| adam, adamw, sgd | torch.optim's own classes (sgd with momentum 0.9)                          |
| sam           | SAM over Adam: two forward/backward passes per step                          |
| asam          | adaptive SAM (perturbation scaled by abs(theta)) over Adam                   |
| sam-k         | SAM every ``sam_every``-th step, a plain Adam step otherwise (cost baseline)  |
| graphsam      | GraphSAM, the paper's formulation: about one pass per step                   |
| graphsam-ref  | GraphSAM reproducing the released research code's behaviour                 |
"""
from __future__ import annotations

import torch

OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "sam", "asam", "sam-k", "graphsam", "graphsam-ref")
SAM_FAMILY = ("sam", "asam", "sam-k")
GRAPHSAM_FAMILY = ("graphsam", "graphsam-ref")


def check_optimizer_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}")
    return key


def zeroes_own_grads(optimizer) -> bool:
    """True for this package's SAM-family optimizers: they zero the gradients before each
    closure call themselves, and their gradients are views into a flat buffer that the training
    loop must not replace (``zero_grad(set_to_none=True)`` would)."""
    return type(optimizer).__module__.startswith("graphsam_ext.optim")


def build_optimizer(
    name: str,
    params,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    rho: float = 0.05,
    beta: float = 0.99,
    gamma: float = 0.5,
    lam: int = 1,
    sam_every: int = 2,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` over ``params``.

    rho: SAM / ASAM / GraphSAM neighbourhood size. beta, gamma, lam: GraphSAM's EMA smoothing,
    rho decay factor and decay period in epochs. sam_every: the k of sam-k. momentum: SGD's.
    The base optimizer of every SAM variant is Adam with ``lr`` and ``weight_decay``.
    """
    key = check_optimizer_name(name)
    params = list(params)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    from graphsam_ext.optim import SAM, GraphSAM

    base = dict(base_optimizer="adam", lr=lr, weight_decay=weight_decay)
    if key == "sam":
        return SAM(params, rho=rho, **base)
    if key == "asam":
        return SAM(params, rho=rho, adaptive=True, **base)
    if key == "sam-k":
        if sam_every < 1:
            raise ValueError(f"sam_every (the k of sam-k) must be >= 1, got {sam_every}")
        return SAM(params, rho=rho, sam_every=sam_every, **base)
    mode = "reference" if key == "graphsam-ref" else "paper"
    return GraphSAM(params, rho=rho, beta=beta, gamma=gamma, lam=lam, mode=mode, **base)
