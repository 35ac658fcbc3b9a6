"""One optimizer step at 10M parameters in 100 tensors, ours next to torch's, in one run.

The closure only refills the gradients from a preallocated buffer, so what is timed is the
optimizer's own work. GB/s = bytes an ideal implementation moves per step / median time:
the closure's refill (8 B/param: read the stored gradient, write .grad) plus the update
(Adam 28 B/param; SAM adds two norm reads, the perturbation and backup (16 B) and a second
refill; GraphSAM adds the perturbation, one norm read and the direction EMA, which reads and
writes d (8 B) in the pass that reads the gradient for Adam).
Ours also zero the gradient buffer before each closure (4 B/param, counted).

Run: make bench (or GRAPHSAM_BENCH_DEVICE=cuda on a GPU machine).
"""
import os
import time

import pytest
import torch

from benchmarks import conftest
from graphsam_ext import ops
from graphsam_ext.optim import SAM, FlatParams, GraphSAM

DEVICE = os.environ.get("GRAPHSAM_BENCH_DEVICE", "cpu")
NUMEL = int(os.environ.get("GRAPHSAM_BENCH_NUMEL", 10_000_000))
TENSORS = 100
GROUP = f"optimizer step, {NUMEL / 1e6:g}M fp32 params in {TENSORS} tensors ({DEVICE})"
conftest.BASELINES[GROUP] = "torch Adam(fused=True)"
ROUNDS = int(os.environ.get("GRAPHSAM_BENCH_ROUNDS", 15))
ALTERNATING = f"GraphSAM step, fused and reference alternating in each round ({DEVICE})"
conftest.BASELINES[ALTERNATING] = "ours fused GraphSAM"

BYTES = {  # per parameter per step, fp32
    "copy (same size)": 8,
    "torch Adam(foreach=True)": 8 + 28,
    "torch Adam(fused=True)": 8 + 28,
    "ours fused Adam": 4 + 8 + 28,
    "ours fused SAM": 2 * (4 + 8) + 4 + 16 + 4 + 28,
    "plain per-tensor SAM": 2 * 8 + 4 + 16 + 4 + 28,
    "ours fused GraphSAM": 4 + 8 + 16 + 4 + 8 + 28,
    "ours reference GraphSAM": 4 + 8 + 16 + 4 + 8 + 28,
}


def make_problem():
    gen = torch.Generator().manual_seed(0)
    base, rest = divmod(NUMEL, TENSORS)
    sizes = [base + (1 if i < rest else 0) for i in range(TENSORS)]
    params = [torch.nn.Parameter(torch.randn(n, generator=gen).to(DEVICE)) for n in sizes]
    stored = [torch.randn(n, generator=gen).mul_(1e-2).to(DEVICE) for n in sizes]
    for p in params:
        p.grad = torch.zeros_like(p)
    return params, stored


def refill(params, stored):
    def closure():
        torch._foreach_copy_([p.grad for p in params], stored)
        return None
    return closure


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(benchmark, fn):
    def run():
        fn()
        sync()
    fn()
    sync()
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2, iterations=1)


def record(report, benchmark, name):
    report.add(GROUP, name, benchmark, bytes_moved=BYTES[name] * NUMEL)


def plain_sam_step(params, base, rho, closure):
    """SAM the way it is usually written: per-tensor ops, perturb, re-evaluate, subtract."""
    closure()
    with torch.no_grad():
        norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
        scale = rho / (norm + 1e-12)
        eps = []
        for p in params:
            e = p.grad * scale
            p.add_(e)
            eps.append(e)
    closure()
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
    base.step()


def test_copy(benchmark, report):
    src = torch.randn(NUMEL, device=DEVICE)
    dst = torch.empty_like(src)
    timed(benchmark, lambda: dst.copy_(src))
    record(report, benchmark, "copy (same size)")


@pytest.mark.parametrize("variant", ["foreach", "fused"])
def test_torch_adam(benchmark, report, variant):
    params, stored = make_problem()
    opt = torch.optim.Adam(params, lr=1e-3, **{variant: True})
    closure = refill(params, stored)
    timed(benchmark, lambda: opt.step(closure))
    record(report, benchmark, f"torch Adam({variant}=True)")


def test_ours_fused_adam(benchmark, report):
    params, stored = make_problem()
    flat = FlatParams([{"params": params}])
    bucket = flat.buckets[0]
    m, v = bucket.new_buffer(), bucket.new_buffer()
    step = torch.zeros((), device=DEVICE)
    closure = refill(params, stored)

    def adam_step():
        flat.zero_grad()
        closure()
        step.add_(1)
        ops.adam_step_(bucket.data, bucket.grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    timed(benchmark, adam_step)
    record(report, benchmark, "ours fused Adam")


def test_ours_fused_sam(benchmark, report):
    params, stored = make_problem()
    opt = SAM(params, rho=0.05, lr=1e-3, implementation="fused")
    closure = refill(params, stored)
    timed(benchmark, lambda: opt.step(closure))
    record(report, benchmark, "ours fused SAM")


def test_plain_sam(benchmark, report):
    params, stored = make_problem()
    base = torch.optim.Adam(params, lr=1e-3)
    closure = refill(params, stored)
    timed(benchmark, lambda: plain_sam_step(params, base, 0.05, closure))
    record(report, benchmark, "plain per-tensor SAM")


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_graphsam(benchmark, report, impl):
    params, stored = make_problem()
    opt = GraphSAM(params, rho=0.05, lr=1e-3, implementation=impl)
    closure = refill(params, stored)
    opt.step(closure)  # the epoch's first step (exact gradient) is not what is timed
    timed(benchmark, lambda: opt.step(closure))
    record(report, benchmark, f"ours {impl} GraphSAM")


def test_graphsam_alternating(benchmark, report):
    """Fused and reference GraphSAM step by step in the same rounds: a slow spell of a shared
    machine slows both, so their ratio is steadier than one taken from separate tests."""
    steps, samples = {}, {"fused": [], "reference": []}
    for impl in samples:
        params, stored = make_problem()
        opt = GraphSAM(params, rho=0.05, lr=1e-3, implementation=impl)
        closure = refill(params, stored)
        opt.step(closure)  # the epoch's first step
        steps[impl] = (opt, closure)

    def one_round():
        for impl, (opt, closure) in steps.items():
            start = time.perf_counter()
            opt.step(closure)
            sync()
            samples[impl].append(time.perf_counter() - start)

    for _ in range(2):
        one_round()
    for values in samples.values():
        values.clear()
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0, iterations=1)
    for impl, values in samples.items():
        name = f"ours {impl} GraphSAM"
        report.add(ALTERNATING, name, benchmark, bytes_moved=BYTES[name] * NUMEL, samples=values)
