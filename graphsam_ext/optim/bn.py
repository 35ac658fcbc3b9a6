"""BatchNorm and the SAM family: running statistics from the first forward pass of a step only.

A SAM step evaluates the model more than once (SAM at theta and at theta + eps; GraphSAM at an
epoch's start at theta and at theta + eps), and in training mode every forward pass moves the
BatchNorm running mean and variance. The statistics of the perturbed point are not those of the
weights the step leaves, and counting each batch twice halves the effective momentum. The
helpers here let the first closure call of a step update the statistics and freeze them in the
later ones (the batch statistics still normalize those passes, as in training mode).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def frozen_bn_stats(model: torch.nn.Module):
    """Inside: BatchNorm layers of ``model`` in training mode normalize with the batch
    statistics but leave their running statistics (and ``num_batches_tracked``) unchanged.

    Momentum 0 keeps the running mean and variance; ``num_batches_tracked``, which the layers still
    increment, is put back on exit (on the device, without reading it)."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def bn_first_pass_only(model: torch.nn.Module, closure: Callable) -> Callable:
    """``closure`` for one optimizer step whose first call updates the BatchNorm running
    statistics and whose later calls (the perturbed passes) run inside ``frozen_bn_stats``.
    Make a new one for each step::

        opt.step(bn_first_pass_only(model, closure))
    """
    calls = 0

    def wrapped():
        nonlocal calls
        calls += 1
        if calls == 1:
            return closure()
        with frozen_bn_stats(model):
            return closure()

    return wrapped
