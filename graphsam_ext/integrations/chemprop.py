"""Train a chemprop v2 ``MPNN`` with GraphSAM, SAM or ASAM inside chemprop's own Lightning Trainer.

::

    from chemprop import models, nn
    from graphsam_ext.integrations.chemprop import use_optimizer

    model = models.MPNN(nn.BondMessagePassing(), nn.MeanAggregation(), nn.RegressionFFN())
    use_optimizer(model, "graphsam", rho=0.05)          # or "sam", "asam"; returns the model
    lightning.pytorch.Trainer(max_epochs=50).fit(model, train_loader, val_loader)

``use_optimizer`` changes only this model object (any ``MPNN`` subclass, a multicomponent one or
one loaded from a checkpoint):

- its ``configure_optimizers`` runs chemprop's own, then builds our optimizer (fused engine where
  the native library exists) over the same parameter groups, with the learning rate and Adam's
  betas / eps / weight decay that chemprop's optimizer was given, and rebuilds chemprop's
  learning-rate scheduler (a ``LambdaLR``: its warm-up / decay lambdas) on ours, with the same
  Lightning scheduler settings (``interval="step"``). The base update is Adam, as chemprop's;
- its ``on_train_epoch_start`` first marks the epoch for GraphSAM
  (:func:`graphsam_ext.integrations.lightning.start_epochs`), so each epoch's first step takes
  the exact gradient, then runs the model's own hook;
- the Trainer's settings are checked when the optimizer is built
  (:func:`graphsam_ext.integrations.lightning.check_trainer`: no gradient accumulation, no
  GradScaler precision).

No callback is needed (``SAMCallback`` may be added too; it does the same once more, harmlessly).
chemprop stays an optional extra (``pip install graphsam-ext[chemprop]``); ``import graphsam_ext``
does not import this module, and this module imports chemprop only when ``use_optimizer`` is called.
"""
from __future__ import annotations

import torch

from graphsam_ext.errors import UserError

OPTIMIZERS = ("adam", "graphsam", "sam", "asam")
_ADAM_KEYS = ("betas", "eps", "weight_decay")


def build_optimizer(name: str, param_groups, **kwargs) -> torch.optim.Optimizer:
    """One of ours by name over ``param_groups`` (dicts with ``params`` and ``lr``), Adam as the
    base: ``graphsam`` (GraphSAM), ``sam`` (SAM), ``asam`` (SAM with ``adaptive=True``);
    ``kwargs`` go to the class (rho, beta, gamma, lam, implementation, and Adam's betas, eps,
    weight_decay)."""
    from graphsam_ext.optim import SAM, GraphSAM

    if name == "graphsam":
        return GraphSAM(param_groups, base_optimizer="adam", **kwargs)
    if name == "sam":
        return SAM(param_groups, base_optimizer="adam", **kwargs)
    if name == "asam":
        if "adaptive" in kwargs:
            raise UserError("optimizer 'asam' is SAM with adaptive=True; do not pass adaptive (use 'sam' for "
                            "adaptive=False)")
        return SAM(param_groups, base_optimizer="adam", adaptive=True, **kwargs)
    raise UserError(f"optimizer {name!r}: expected one of {', '.join(n for n in OPTIMIZERS if n != 'adam')}")


def _adam_settings(opt: torch.optim.Optimizer) -> tuple[list[dict], dict]:
    """Parameter groups (params, the scheduler-free lr) and Adam's hyper-parameters of ``opt``."""
    if not isinstance(opt, torch.optim.Adam) or isinstance(opt, torch.optim.AdamW):
        raise UserError(f"configure_optimizers built a {type(opt).__name__}; use_optimizer replaces chemprop's Adam "
                        "(chemprop >= 2.1); with another optimizer, build ours by hand in your configure_optimizers")
    first = opt.param_groups[0]
    for key in ("amsgrad", "maximize"):
        if any(group.get(key) for group in opt.param_groups):
            raise UserError(f"chemprop's Adam has {key}=True, which our fused Adam base does not implement")
    for group in opt.param_groups[1:]:
        if any(group[k] != first[k] for k in _ADAM_KEYS):
            raise UserError("chemprop's Adam groups differ in betas / eps / weight_decay; our optimizers take one "
                            "setting of them")
    groups = [{"params": group["params"], "lr": group.get("initial_lr", group["lr"])} for group in opt.param_groups]
    return groups, {k: first[k] for k in _ADAM_KEYS}


def _rebuild_scheduler(scheduler, opt: torch.optim.Optimizer):
    """chemprop's scheduler, the same lambdas, on ``opt``."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise UserError(f"chemprop's learning-rate scheduler is a {type(scheduler).__name__}; use_optimizer rebuilds "
                        "a LambdaLR (chemprop >= 2.1's NoamLike schedule) on our optimizer, not this one")
    if scheduler.last_epoch != 0:
        raise UserError(f"chemprop's scheduler has already stepped {scheduler.last_epoch} times; use_optimizer needs "
                        "the fresh one configure_optimizers returns")
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=list(scheduler.lr_lambdas))


def replace_optimizer(config, factory):
    """``configure_optimizers``' return value with its optimizer replaced by ``factory(groups,
    adam_kwargs)`` and its scheduler rebuilt on the new optimizer. Accepts an optimizer, a dict
    ``{"optimizer", "lr_scheduler"}`` (a scheduler or Lightning's scheduler dict) or
    ``([optimizer], [scheduler, ...])``."""
    if isinstance(config, torch.optim.Optimizer):
        groups, adam = _adam_settings(config)
        return factory(groups, adam)
    if isinstance(config, dict) and "optimizer" in config:
        groups, adam = _adam_settings(config["optimizer"])
        opt = factory(groups, adam)
        out = {**config, "optimizer": opt}
        sched = config.get("lr_scheduler")
        if isinstance(sched, dict):
            out["lr_scheduler"] = {**sched, "scheduler": _rebuild_scheduler(sched["scheduler"], opt)}
        elif sched is not None:
            out["lr_scheduler"] = _rebuild_scheduler(sched, opt)
        return out
    if isinstance(config, (list, tuple)) and len(config) == 2 and len(config[0]) == 1:
        (old,), scheds = config
        groups, adam = _adam_settings(old)
        opt = factory(groups, adam)
        rebuilt = []
        for s in scheds:
            if isinstance(s, dict):
                rebuilt.append({**s, "scheduler": _rebuild_scheduler(s["scheduler"], opt)})
            else:
                rebuilt.append(_rebuild_scheduler(s, opt))
        return [opt], rebuilt
    raise UserError(f"configure_optimizers returned {type(config).__name__}; use_optimizer understands one optimizer, "
                    "a dict with 'optimizer' (and 'lr_scheduler'), or ([optimizer], [schedulers])")


def use_optimizer(model, optimizer: str = "graphsam", **kwargs):
    """Make chemprop's ``model`` train with our ``optimizer`` ("graphsam", "sam", "asam"; "adam"
    leaves the model as it is). ``kwargs`` go to the optimizer (rho, beta, gamma, lam,
    implementation; betas / eps / weight_decay override chemprop's). Returns ``model``."""
    from chemprop.models import MPNN  # noqa: F401  (chemprop must be installed: the extra)

    from graphsam_ext.integrations.lightning import check_trainer, start_epochs

    if optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if not isinstance(model, MPNN):
        raise UserError(f"use_optimizer: expected a chemprop MPNN (chemprop.models.MPNN or a subclass), got "
                        f"{type(model).__name__}")
    if optimizer == "adam":
        if kwargs:
            raise UserError(f"optimizer 'adam' is chemprop's own; it takes no options here, got {sorted(kwargs)}")
        return model
    if getattr(model, "_graphsam_optimizer", None) is not None:
        raise UserError(f"use_optimizer: this model already trains with {model._graphsam_optimizer!r}; build a new "
                        "model to change the optimizer")
    chemprop_configure = model.configure_optimizers
    own_epoch_start = model.on_train_epoch_start

    def factory(groups, adam):
        return build_optimizer(optimizer, groups, **{**adam, **kwargs})

    def configure_optimizers():
        config = replace_optimizer(chemprop_configure(), factory)
        opt = config if isinstance(config, torch.optim.Optimizer) else (
            config["optimizer"] if isinstance(config, dict) else config[0][0])
        if model._trainer is not None:
            check_trainer(model.trainer, [opt])
        return config

    def on_train_epoch_start():
        start_epochs(model.trainer)
        return own_epoch_start()

    # a dry build now, so a bad option fails here rather than at Trainer.fit
    build_optimizer(optimizer, [{"params": [torch.zeros(1, requires_grad=True)], "lr": 1e-3}], **kwargs)
    model.configure_optimizers = configure_optimizers
    model.on_train_epoch_start = on_train_epoch_start
    model._graphsam_optimizer = optimizer
    return model
