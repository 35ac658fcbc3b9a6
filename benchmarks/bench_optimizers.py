"""One optimizer step at 10M parameters in 100 tensors, ours next to torch's, in one run.

The closure only refills the gradients from a preallocated buffer, so what is timed is the
optimizer's own work. GB/s = bytes an ideal implementation moves per step / median time:
the closure's refill (8 B/param: read the stored gradient, write .grad) plus the update
(Adam 28 B/param; SAM adds two norm reads, the perturbation and backup (16 B) and a second
refill; ASAM's first norm also reads the weights (4 B); GraphSAM adds the perturbation, one norm
read and the direction EMA, which reads and writes d (8 B) in the pass that reads the gradient for
Adam). Ours also zero the gradient buffer before each closure (4 B/param, counted).

LookSAM's step time alternates (an exact step every k = 5, cheap steps in between): its median
and bytes are those of the cheap steps. Every row's ratio is to torch Adam(fused=True) in the
same run.

Each contender is timed alone (``test_step``) and all of them in turn in the same rounds
(``test_round_robin``), which gives the steadier ratios on a shared machine.

Run: make bench (or GRAPHSAM_BENCH_DEVICE=cuda on a GPU machine).
"""
import os
import time
from types import SimpleNamespace

import pytest
import torch

from benchmarks import conftest
from graphsam_ext import ops
from graphsam_ext.optim import AESAM, SAM, FlatParams, GraphSAM, LookSAM, SAMOne

DEVICE = os.environ.get("GRAPHSAM_BENCH_DEVICE", "cpu")
NUMEL = int(os.environ.get("GRAPHSAM_BENCH_NUMEL", 10_000_000))
TENSORS = 100
GROUP = f"optimizer step, {NUMEL / 1e6:g}M fp32 params in {TENSORS} tensors ({DEVICE})"
conftest.BASELINES[GROUP] = "torch Adam(fused=True)"
ROUNDS = int(os.environ.get("GRAPHSAM_BENCH_ROUNDS", 15))
ROUND_ROBIN = f"the same step, every contender in turn in each round ({DEVICE})"
conftest.BASELINES[ROUND_ROBIN] = "torch Adam(fused=True)"

BYTES = {  # per parameter per step, fp32
    "copy (same size)": 8,
    "torch Adam(foreach=True)": 8 + 28,
    "torch Adam(fused=True)": 8 + 28,
    "ours fused Adam": 4 + 8 + 28,
    "ours fused SAM": 2 * (4 + 8) + 4 + 16 + 4 + 28,
    "ours fused ASAM": 2 * (4 + 8) + 8 + 16 + 4 + 28,
    "plain per-tensor SAM": 2 * 8 + 4 + 16 + 4 + 28,
    "ours fused GraphSAM": 4 + 8 + 16 + 4 + 8 + 28,
    "ours reference GraphSAM": 4 + 8 + 16 + 4 + 8 + 28,
    # SAM-One: GraphSAM without the direction EMA (d is read by the perturbation only)
    "ours fused SAM-One": 4 + 8 + 16 + 4 + 28,
    # LookSAM, k = 5: the median is one of the k - 1 cheap steps (one closure, the norm of g (4),
    # g + alpha ||g|| u (12), Adam); the exact step every k adds SAM's passes, copying g (8), the
    # dot <g, g_s> (8), g_v = g_s - c g (12), its norm (4) and the normalization (8)
    "ours fused LookSAM": 4 + 8 + 4 + 12 + 28,
    # AE-SAM: the refilled gradient is the same at every step, so ||g||^2 never falls below its
    # running mean and every step is a SAM step (the most it can cost); "host" reads the decision
    # once per step, "device" multiplies the perturbation by it
    "ours fused AE-SAM (host decision)": 2 * (4 + 8) + 4 + 16 + 4 + 28,
    "ours fused AE-SAM (device decision)": 2 * (4 + 8) + 4 + 16 + 4 + 28,
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


def copy_step():
    src = torch.randn(NUMEL, device=DEVICE)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def optimizer_step(make, first_step_untimed=False):
    """A contender from ``make(params)``: anything with ``step(closure)``, given the refill closure.
    ``first_step_untimed``: take one step first (GraphSAM's epoch-first step, with an exact
    gradient and a second closure call, is not what is timed)."""
    params, stored = make_problem()
    opt = make(params)
    closure = refill(params, stored)
    if first_step_untimed:
        opt.step(closure)
    return lambda: opt.step(closure)


def ours_fused_adam_step():
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
    return adam_step


def plain_sam(params):
    base = torch.optim.Adam(params, lr=1e-3)
    return SimpleNamespace(step=lambda closure: plain_sam_step(params, base, 0.05, closure))


def graphsam(impl):
    return lambda: optimizer_step(lambda p: GraphSAM(p, rho=0.05, lr=1e-3, implementation=impl), True)


# name -> a function that sets the contender up and returns one step of it
CONTENDERS = {
    "copy (same size)": copy_step,
    "torch Adam(foreach=True)": lambda: optimizer_step(lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
    "torch Adam(fused=True)": lambda: optimizer_step(lambda p: torch.optim.Adam(p, lr=1e-3, fused=True)),
    "ours fused Adam": ours_fused_adam_step,
    "ours fused SAM": lambda: optimizer_step(lambda p: SAM(p, rho=0.05, lr=1e-3, implementation="fused")),
    "ours fused ASAM": lambda: optimizer_step(
        lambda p: SAM(p, rho=0.5, adaptive=True, lr=1e-3, implementation="fused")),
    "plain per-tensor SAM": lambda: optimizer_step(plain_sam),
    "ours fused GraphSAM": graphsam("fused"),
    "ours reference GraphSAM": graphsam("reference"),
    "ours fused SAM-One": lambda: optimizer_step(
        lambda p: SAMOne(p, rho=0.05, lr=1e-3, implementation="fused"), True),
    "ours fused LookSAM": lambda: optimizer_step(
        lambda p: LookSAM(p, rho=0.05, k=5, alpha=0.7, lr=1e-3, implementation="fused")),
    "ours fused AE-SAM (host decision)": lambda: optimizer_step(
        lambda p: AESAM(p, rho=0.05, decision="host", lr=1e-3, implementation="fused")),
    "ours fused AE-SAM (device decision)": lambda: optimizer_step(
        lambda p: AESAM(p, rho=0.05, decision="device", lr=1e-3, implementation="fused")),
}


@pytest.mark.parametrize("name", list(CONTENDERS))
def test_step(benchmark, report, name):
    timed(benchmark, CONTENDERS[name]())
    report.add(GROUP, name, benchmark, bytes_moved=BYTES[name] * NUMEL)


def test_round_robin(benchmark, report):
    """Every contender takes one step in each round, in a fixed order: a slow spell of a shared
    machine falls on all of them, so their ratios are steadier than those of the separate tests,
    and none finds its own data still in cache from its previous step."""
    steps = {name: make() for name, make in CONTENDERS.items()}
    samples = {name: [] for name in steps}

    def one_round():
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            samples[name].append(time.perf_counter() - start)

    for _ in range(2):
        one_round()
    for values in samples.values():
        values.clear()
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0, iterations=1)
    for name, values in samples.items():
        report.add(ROUND_ROBIN, name, benchmark, bytes_moved=BYTES[name] * NUMEL, samples=values)
