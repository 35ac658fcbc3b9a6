"""Gradient accumulation for the SAM family: a closure that runs several micro-batches.

A SAM-family step zeroes the gradients before each closure call and reads them after it, so a
closure that runs forward + backward over N micro-batches, each loss weighted so that the
weights sum to one, hands the optimizer the gradient of the whole batch. Every phase of a step
(SAM's perturbation gradient and its updating gradient, GraphSAM's exact gradient at an epoch's
start and its gradient at the perturbed point) then accumulates the same N micro-batches: the
perturbation uses the accumulated gradient, never a single micro-batch's. Memory stays that of
one micro-batch, since each backward frees its graph before the next forward.

Under ``DistributedDataParallel`` pass ``no_sync=ddp_model.no_sync``: the first N - 1 micro-batches
run (forward and backward) inside it and the last one synchronizes the accumulated gradient, so
each phase makes one all-reduce, as DDP does for one backward.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence


def accumulating_closure(micro_batches: Sequence, loss_of: Callable, weights: Sequence[float] | None = None,
                         no_sync: Callable | None = None, grad_scaler=None) -> Callable:
    """A closure for ``optimizer.step`` that accumulates gradients over ``micro_batches``.

    loss_of(micro_batch) -> loss: the forward pass and the loss of one micro-batch (no backward).
    weights: the weight of each micro-batch's loss (default 1 / N each, so for mean losses over
        micro-batches of equal size the result is the mean over the whole batch; with unequal
        sizes weigh each by its share of the batch). They should sum to one for the gradient to
        be the batch's.
    no_sync: a context manager factory (``ddp_model.no_sync``) to skip the gradient all-reduce of
        every micro-batch but the last.

    grad_scaler: a ``torch.amp.GradScaler`` (fp16): each backward runs on ``grad_scaler.scale`` of
        the weighted loss; hand the same scaler to the step, ``optimizer.step(closure, grad_scaler=...)``.

    The closure returns the weighted sum of the micro-batch losses (detached, on their device, unscaled).
    """
    micro_batches = list(micro_batches)
    n = len(micro_batches)
    if n == 0:
        raise ValueError("micro_batches: expected at least one micro-batch")
    if weights is None:
        weights = [1.0 / n] * n
    weights = list(weights)
    if len(weights) != n:
        raise ValueError(f"weights: expected one weight per micro-batch ({n}), got {len(weights)}")

    def closure():
        total = None
        for i, (batch, weight) in enumerate(zip(micro_batches, weights)):
            context = no_sync() if no_sync is not None and i < n - 1 else contextlib.nullcontext()
            with context:
                loss = loss_of(batch)
                scaled = loss if n == 1 and weight == 1.0 else loss * weight
                (scaled if grad_scaler is None else grad_scaler.scale(scaled)).backward()
            part = scaled.detach()
            total = part if total is None else total + part
        return total

    return closure
