"""Dropout, forward + backward: graphsam_ext.nn.Dropout (counter-based hash mask) beside
torch.nn.Dropout (bernoulli_ mask), alone on the default model's tensor shapes and inside one
training step of the default model.

The default model is the command line's (``TrainConfig()`` through
``graphsam_ext.train.loop.build_model``) on batches of ``TrainConfig().batch_size`` molecules of
the same data as ``bench_training.py`` (the embedded CHEMBL2321810 set with RDKit, synthetic
molecule-like graphs of the same widths without). The model as built uses our dropout
(``graphsam_ext.nn.ModelDropout``); the "torch" model is a deep copy of the same initial weights
whose dropout modules are swapped for ``torch.nn.Dropout`` with the same p.

- ``test_dropout_op``: one case per distinct shape the model's dropouts see in one batch (found
  with forward hooks), plus all of one step's dropout calls in a row. Each round runs torch's and
  ours alternately on the same input and upstream gradient.
- ``test_model_step``: forward, masked loss and backward of the model on ``STEPS`` batches per
  round, torch's model and ours alternately in each round (no optimizer step: the same weights
  throughout, so both do the same work every round).

Time: wall and process CPU seconds per call (CPU seconds are robust on a shared machine with one
thread); the table gives the medians and the ratio ours / torch of both, from the same rounds.

Run:    pytest benchmarks/bench_dropout.py      (GRAPHSAM_BENCH_DEVICE=cuda on a GPU machine;
        GRAPHSAM_BENCH_ROUNDS, default 20; GRAPHSAM_BENCH_THREADS, default 1 on the CPU)
Smoke:  pytest benchmarks/bench_dropout.py --benchmark-disable   (one round, checks the swap)
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from collections import Counter

import pytest
import torch

from benchmarks import conftest
from benchmarks.bench_training import Data
from graphsam_ext import nn as gnn
from graphsam_ext.data import collate
from graphsam_ext.train.losses import loss_for
from graphsam_ext.train.loop import build_model

DEVICE = os.environ.get("GRAPHSAM_BENCH_DEVICE", "cpu")
ROUNDS = int(os.environ.get("GRAPHSAM_BENCH_ROUNDS", 20))
THREADS = os.environ.get("GRAPHSAM_BENCH_THREADS", "1" if DEVICE == "cpu" else "")
STEPS = 8
REPEAT = 10  # calls per sample of a single-shape case
IMPLS = ["torch", "ours"]  # torch first: the baseline of every group


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of fn."""
    _sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def swap_dropouts(model: torch.nn.Module) -> int:
    """Replace every graphsam_ext.nn.Dropout of ``model`` (in place) by torch.nn.Dropout(p); returns how many."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, gnn.Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
                swapped += 1
    return swapped


class Setup:
    """The default model (torch's dropout and ours, same weights), its batches and its dropout shapes."""

    def __init__(self, smoke: bool):
        self.data = Data(64 if smoke else 512)
        cfg = self.data.cfg
        device = torch.device(DEVICE)
        torch.manual_seed(0)
        self.models = {"ours": build_model(cfg, self.data.dataset).to(device)}
        self.models["torch"] = copy.deepcopy(self.models["ours"])
        self.swapped = swap_dropouts(self.models["torch"])
        self.loss_fn = loss_for(self.data.dataset.task_type)
        size = cfg.batch_size
        steps = 1 if smoke else STEPS
        indices = self.data.indices
        self.batches = [collate([self.data.dataset[i] for i in indices[k * size:(k + 1) * size]]).to(device)
                        for k in range(steps)]
        self.shapes = self._dropout_shapes()
        self.params = sum(p.numel() for p in self.models["torch"].parameters())

    def _dropout_shapes(self) -> list[tuple[int, ...]]:
        """The input shape of every dropout call of one forward of the first batch, in call order."""
        shapes = []
        hooks = [m.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
                 for m in self.models["torch"].modules() if isinstance(m, torch.nn.Dropout)]
        try:
            self.step("torch", self.batches[0])
        finally:
            for hook in hooks:
                hook.remove()
        return shapes

    def target(self, batch):
        scaler = self.data.scaler
        return batch.y if scaler is None else scaler.transform(batch.y)

    def step(self, impl: str, batch) -> torch.Tensor:
        model = self.models[impl]
        model.train()
        model.zero_grad(set_to_none=True)
        loss = self.loss_fn(model(batch), self.target(batch), batch.mask)
        loss.backward()
        return loss.detach()


@pytest.fixture(scope="module")
def setup(request):
    smoke = request.config.getoption("benchmark_disable", False)
    with conftest.torch_threads(THREADS):
        yield Setup(smoke)


def add_rows(report, benchmark, group: str, samples: dict, extra: dict | None = None) -> None:
    conftest.BASELINES[group] = "torch"
    base_cpu = statistics.median(s[1] for s in samples["torch"])
    for impl in IMPLS:
        cpu = statistics.median(s[1] for s in samples[impl])
        report.add(group, impl, benchmark, samples=[s[0] for s in samples[impl]], extra={
            "CPU ms": cpu * 1e3, "x torch (CPU)": cpu / base_cpu, **(extra or {})})


def test_dropout_op(benchmark, report, setup):
    """Each distinct shape (REPEAT calls per sample) and all of one step's calls in a row, all in
    every round, torch's and ours alternately."""
    shapes, p = setup.shapes, setup.data.cfg.dropout
    assert shapes, "the default model ran no dropout"
    drops = {"torch": torch.nn.Dropout(p), "ours": gnn.Dropout(p)}
    gen = torch.Generator().manual_seed(0)
    counts = Counter(shapes)
    cases = {f"shape {s}, {REPEAT} calls ({counts[s]} per step)": [s] * REPEAT for s in sorted(counts)}
    cases[f"all {len(shapes)} dropout calls of one step"] = shapes
    inputs = {label: [(torch.randn(s, generator=gen).to(DEVICE).requires_grad_(True),
                       torch.randn(s, generator=gen).to(DEVICE)) for s in case_shapes]
              for label, case_shapes in cases.items()}
    samples = {label: {impl: [] for impl in IMPLS} for label in cases}

    def run(impl, pairs):
        for x, grad in pairs:
            drops[impl](x).backward(grad)

    def one_round():
        for label, pairs in inputs.items():
            for impl in IMPLS:
                samples[label][impl].append(timed(lambda: run(impl, pairs)))

    if not benchmark.disabled:
        one_round()  # warm-up
        for values in samples.values():
            for impl in IMPLS:
                values[impl].clear()
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0, iterations=1)
    if benchmark.disabled:
        return
    for label, values in samples.items():
        group = f"dropout fwd+bwd, p={p}, {label} ({DEVICE}, {torch.get_num_threads()} threads)"
        add_rows(report, benchmark, group, values)


def test_model_step(benchmark, report, setup):
    assert setup.swapped == len([m for m in setup.models["ours"].modules() if isinstance(m, gnn.Dropout)])
    assert setup.swapped > 0 and not any(isinstance(m, gnn.Dropout) for m in setup.models["torch"].modules())
    samples = {impl: [] for impl in IMPLS}

    def steps(impl):
        for batch in setup.batches:
            loss = setup.step(impl, batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{impl}: the training loss is not finite ({float(loss)})")

    def one_round():
        for impl in IMPLS:
            samples[impl].append(timed(lambda: steps(impl)))

    if not benchmark.disabled:
        for impl in IMPLS:
            steps(impl)  # warm-up
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0, iterations=1)
    if benchmark.disabled:
        return
    n = len(setup.batches)
    per_step = {impl: [(w / n, c / n) for w, c in values] for impl, values in samples.items()}
    group = (f"default model forward+backward step, batch {setup.data.cfg.batch_size} ({setup.params / 1e3:.1f}K "
             f"params, {setup.swapped} dropouts, {setup.data.source}; {DEVICE}, {torch.get_num_threads()} threads)")
    add_rows(report, benchmark, group, per_step)
