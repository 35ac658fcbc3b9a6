"""Optimizers by name, so the CLI, the trainer and the results all speak the same names.

| name          | what it is                                                                   |
| ------------- | ---------------------------------------------------------------------------- |
| adam, adamw, sgd | torch.optim's own classes (sgd with momentum 0.9)                          |
| sam           | SAM over Adam: two forward/backward passes per step                          |
| asam          | adaptive SAM (perturbation scaled by abs(theta)) over Adam                   |
| sam-k         | SAM every ``sam_every``-th step, a plain Adam step otherwise (cost baseline)  |
| graphsam      | GraphSAM, the paper's formulation: about one pass per step                   |
| graphsam-ref  | GraphSAM reproducing the released research code's behaviour                 |
| looksam       | LookSAM: SAM every ``looksam_k``-th step, the stored orthogonal part between |
| ae-sam        | AE-SAM: SAM only when ||g||^2 is ``aesam_c`` running std above its mean      |
| sam-one       | SAM-One: each epoch's first exact perturbation reused for the whole epoch   |
"""
from __future__ import annotations

import torch

OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "sam", "asam", "sam-k", "graphsam", "graphsam-ref", "looksam", "ae-sam",
                   "sam-one")
SAM_FAMILY = ("sam", "asam", "sam-k", "looksam", "ae-sam")
GRAPHSAM_FAMILY = ("graphsam", "graphsam-ref", "sam-one")
# rho when none is given (the command line's defaults; the classes keep the paper's 0.05 and 0.5). SAM's
# and GraphSAM's come from the search in docs/optimizers.md ("Choosing rho"), six trials each; the
# efficient-SAM baselines take SAM's (sam-one GraphSAM's, whose schedule of rho it shares); ASAM's
# perturbation is scaled by |theta| and was not searched: it keeps 0.05.
SAM_RHO = 0.001
GRAPHSAM_RHO = 0.01
GRAPHSAM_GAMMA = 0.9  # searched with GRAPHSAM_RHO; the paper's code uses 0.5
DEFAULT_RHO = {**{name: SAM_RHO for name in SAM_FAMILY}, **{name: GRAPHSAM_RHO for name in GRAPHSAM_FAMILY},
               "asam": 0.05}


def default_rho_text() -> str:
    """``sam 0.01, graphsam 0.05, ...``: the rho each optimizer gets when none is given."""
    return ", ".join(f"{name} {DEFAULT_RHO[name]:g}" for name in (*SAM_FAMILY, *GRAPHSAM_FAMILY))


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
    rho: float | None = None,
    beta: float = 0.99,
    gamma: float = GRAPHSAM_GAMMA,
    lam: int = 1,
    sam_every: int = 2,
    momentum: float = 0.9,
    looksam_k: int = 8,
    looksam_alpha: float = 0.2,
    aesam_delta: float = 0.9,
    aesam_c: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` over ``params``.

    rho: the neighbourhood size of every SAM variant (GraphSAM's and SAM-One's initial one);
    None: the optimizer's entry in ``DEFAULT_RHO``.
    beta, gamma, lam: GraphSAM's EMA smoothing, rho decay factor and decay period in epochs
    (gamma and lam also SAM-One's). sam_every: the k of sam-k. momentum: SGD's.
    looksam_k, looksam_alpha: LookSAM's period of exact SAM steps and weight of the orthogonal
    component (defaults: the GraphSAM paper's tuning for LookSAM, k = 8, alpha = 0.2; it also
    tuned rho = 1e-4). aesam_delta, aesam_c: AE-SAM's EMA constant (the paper's 0.9) and
    threshold in running standard deviations (0: SAM when ||g||^2 is at or above its mean).
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

    from graphsam_ext.optim import AESAM, SAM, GraphSAM, LookSAM, SAMOne

    base = dict(base_optimizer="adam", lr=lr, weight_decay=weight_decay)
    if rho is None:
        rho = DEFAULT_RHO[key]
    if key == "sam":
        return SAM(params, rho=rho, **base)
    if key == "asam":
        return SAM(params, rho=rho, adaptive=True, **base)
    if key == "sam-k":
        if sam_every < 1:
            raise ValueError(f"sam_every (the k of sam-k) must be >= 1, got {sam_every}")
        return SAM(params, rho=rho, sam_every=sam_every, **base)
    if key == "looksam":
        return LookSAM(params, rho=rho, k=looksam_k, alpha=looksam_alpha, **base)
    if key == "ae-sam":
        return AESAM(params, rho=rho, delta=aesam_delta, c=aesam_c, **base)
    if key == "sam-one":
        return SAMOne(params, rho=rho, gamma=gamma, lam=lam, **base)
    mode = "reference" if key == "graphsam-ref" else "paper"
    return GraphSAM(params, rho=rho, beta=beta, gamma=gamma, lam=lam, mode=mode, **base)
