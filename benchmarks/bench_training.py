"""End-to-end training throughput: molecules per second of one training epoch, Adam vs SAM vs GraphSAM.

The model is the command line's default: ``TrainConfig()`` defaults through
``graphsam_ext.train.loop.build_model`` (whatever those defaults are when this runs), trained
with the optimizers of ``graphsam_ext.train.optimizers.build_optimizer`` (torch's Adam; SAM and
GraphSAM over Adam, fused where the native kernels exist). One epoch is what the training loop
does per batch: collate (DataLoader, in-process), copy to the device, forward, masked loss,
backward, ``optimizer.step(closure)``; GraphSAM's epoch starts with ``start_epoch()``, so its
exact-gradient step is part of every timed epoch (T + 1 closure calls for T batches; SAM 2T).
The learning-rate schedule and validation are left out.

Data: ``GRAPHSAM_BENCH_MOLECULES`` molecules per epoch (default 2048). With RDKit they are the
command line's default dataset (the embedded CHEMBL2321810 set, featurized as ``graphsam train``
does), cycled to that count. Without RDKit (the GPU image has none) they are synthetic
molecule-like graphs of the same feature widths: 20 to 45 atoms (the default set averages 33),
a random spanning tree plus one ring-closing bond per six atoms, both directions of each bond
(or every pair within the pair distance in ``attention="pairs"`` mode), sparse random 0/1 atom
and bond features (random descriptors when the model takes them), one regression target.
Throughput depends on the graph sizes and feature widths, not on the feature values.

Each round times one epoch of every optimizer in turn (after one untimed warm-up epoch each), so
a slow spell of a shared machine falls on all of them alike; the table gives the median epoch's
molecules/s, its ratio to Adam's in the same run, and wall and process CPU seconds per epoch.

Run:    pytest benchmarks/bench_training.py       (GRAPHSAM_BENCH_DEVICE=cuda on a GPU machine;
        GRAPHSAM_BENCH_ROUNDS, default 3; GRAPHSAM_BENCH_THREADS, default 1 on the CPU;
        GRAPHSAM_BENCH_REPORT=file.md writes the table)
Smoke:  pytest benchmarks/bench_training.py --benchmark-disable   (16 molecules, batches of 8, one epoch)
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from benchmarks import conftest
from graphsam_ext.train.config import TrainConfig
from graphsam_ext.train.losses import loss_for
from graphsam_ext.train.loop import build_model, epoch_order
from graphsam_ext.train.optimizers import build_optimizer, zeroes_own_grads
from graphsam_ext.train.targets import TargetScaler

DEVICE = os.environ.get("GRAPHSAM_BENCH_DEVICE", "cpu")
MOLECULES = int(os.environ.get("GRAPHSAM_BENCH_MOLECULES", 2048))
ROUNDS = int(os.environ.get("GRAPHSAM_BENCH_ROUNDS", 3))
# torch CPU threads; default 1 on the CPU, as `graphsam compare` uses (its small default model
# gains little from more, and OpenMP threads slow down badly on cores other processes share)
THREADS = os.environ.get("GRAPHSAM_BENCH_THREADS", "1" if DEVICE == "cpu" else "")
BATCH_SIZES = [128, 512]
OPTIMIZERS = ["adam", "sam", "graphsam"]  # adam first: the others report their ratio to it
SMOKE_MOLECULES, SMOKE_BATCH = 16, 8


def have_rdkit() -> bool:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return False
    return True


def cli_featurizer(cfg: TrainConfig):
    """The featurizer ``graphsam train`` builds for ``cfg`` (as train.experiment.load_data does)."""
    from graphsam_ext.data import Featurizer

    kwargs = {"pair_distance": cfg.pair_distance if cfg.attention == "pairs" else None}
    if getattr(cfg, "descriptors", False):
        kwargs["descriptors"] = True
    return Featurizer(**kwargs)


def _synthetic_edges(n: int, gen: torch.Generator, pair_distance) -> torch.Tensor:
    """(2, E) directed edges of one molecule-like graph of n atoms: bonds, or pairs within
    ``pair_distance`` bonds (``"all"``: every pair of the molecule), no self-loops."""
    child = torch.arange(1, n)
    parent = (torch.rand(n - 1, generator=gen) * child).long()
    rings = torch.randint(0, n, (2, n // 6), generator=gen)
    bonds = torch.cat([torch.stack([parent, child]), rings[:, rings[0] != rings[1]]], 1)
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[bonds[0], bonds[1]] = True
    adj |= adj.T.clone()
    if pair_distance is None:
        return adj.nonzero().T.contiguous()
    reach, frontier = adj.clone(), adj.clone()
    steps = n if pair_distance == "all" else int(pair_distance)
    for _ in range(steps - 1):
        frontier = (frontier.float() @ adj.float() > 0) & ~reach
        reach |= frontier
    reach.fill_diagonal_(False)
    return reach.nonzero().T.contiguous()


def synthetic_dataset(featurizer, count: int, seed: int = 0):
    """``count`` molecule-like graphs with the feature widths of ``featurizer``, one regression task."""
    from graphsam_ext.data import Graph, MoleculeDataset

    gen = torch.Generator().manual_seed(seed)
    pair_distance = getattr(featurizer, "pair_distance", None)
    graphs = []
    for _ in range(count):
        n = int(torch.randint(20, 46, (1,), generator=gen))
        edge_index = _synthetic_edges(n, gen, pair_distance)
        extra = {}
        if getattr(featurizer, "mol_dim", 0):
            extra["mol_features"] = torch.randn(featurizer.mol_dim, generator=gen)
        graphs.append(Graph(
            x=(torch.rand(n, featurizer.atom_dim, generator=gen) < 0.06).float(),
            edge_index=edge_index,
            edge_attr=(torch.rand(edge_index.shape[1], featurizer.edge_dim, generator=gen) < 0.2).float(),
            **extra,
        ))
    y = torch.randn(count, 1, generator=gen)
    mask = torch.ones(count, 1, dtype=torch.bool)
    summary = {"source": "synthetic molecule-like graphs (no RDKit)", "molecules": count}
    return MoleculeDataset.from_graphs(graphs, y, mask, [""] * count, ["target"], "regression", summary, featurizer)


class Data:
    """The epoch's molecules: indices into ``dataset`` (cycled to the requested count)."""

    def __init__(self, count: int):
        self.cfg = TrainConfig()
        if have_rdkit():
            from graphsam_ext.train.experiment import load_data

            self.dataset = load_data(self.cfg)
            self.source = f"{self.cfg.data_label} dataset ({len(self.dataset)} molecules) cycled"
        else:
            self.dataset = synthetic_dataset(cli_featurizer(self.cfg), count)
            self.source = "synthetic molecule-like graphs (no RDKit)"
        self.indices = [i % len(self.dataset) for i in range(count)]
        items = [self.dataset[i] for i in range(len(self.dataset))]
        self.scaler = None
        if self.dataset.task_type == "regression":
            self.scaler = TargetScaler.fit(torch.stack([it.y for it in items]), torch.stack([it.mask for it in items]))
        self.atoms_per_molecule = statistics.mean(it.graph.num_nodes for it in items)
        self.edges_per_molecule = statistics.mean(it.graph.num_edges for it in items)


class EpochRunner:
    """One optimizer training the default model, an epoch at a time, as the training loop does."""

    def __init__(self, name: str, data: Data, batch_size: int, device: torch.device):
        self.name, self.data, self.batch_size, self.device = name, data, batch_size, device
        cfg = data.cfg
        torch.manual_seed(0)  # the same initial weights for every optimizer
        self.model = build_model(cfg, data.dataset).to(device)
        self.optimizer = build_optimizer(name, self.model.parameters(), **cfg.optimizer_kwargs())
        self.own_grads = zeroes_own_grads(self.optimizer)
        self.loss_fn = loss_for(data.dataset.task_type)
        self.epoch = 0
        self.passes = 0
        self.params = sum(p.numel() for p in self.model.parameters())

    def run_epoch(self) -> tuple[float, float, int]:
        """Train one epoch; returns (wall seconds, process CPU seconds, closure calls)."""
        from graphsam_ext.data import make_loader

        model, opt, device, scaler = self.model, self.optimizer, self.device, self.data.scaler
        order = epoch_order(self.data.indices, 0, self.epoch)
        loader = make_loader(self.data.dataset, order, batch_size=self.batch_size, shuffle=False)
        model.train()
        passes = 0
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        if hasattr(opt, "start_epoch"):
            opt.start_epoch()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            target = batch.y if scaler is None else scaler.transform(batch.y)

            def closure():
                nonlocal passes
                passes += 1
                loss = self.loss_fn(model(batch), target, batch.mask)
                loss.backward()
                return loss

            if not self.own_grads:
                opt.zero_grad(set_to_none=True)
            loss = opt.step(closure)
            loss_sum += loss.detach().to(torch.float64)
        _sync(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if not torch.isfinite(loss_sum):
            raise RuntimeError(f"{self.name}: the training loss is not finite ({float(loss_sum)})")
        self.epoch += 1
        return wall, cpu, passes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture(scope="module")
def data(request):
    smoke = request.config.getoption("benchmark_disable", False)
    with conftest.torch_threads(THREADS):
        yield Data(SMOKE_MOLECULES if smoke else MOLECULES)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_epoch_throughput(benchmark, report, data, batch_size):
    device = torch.device(DEVICE)
    smoke = benchmark.disabled
    if smoke:
        batch_size = SMOKE_BATCH
    runners = {name: EpochRunner(name, data, batch_size, device) for name in OPTIMIZERS}
    samples = {name: [] for name in runners}
    if not smoke:
        for runner in runners.values():
            runner.run_epoch()  # warm-up: allocations, flat buffers, optimizer state

    def one_round():
        for name, runner in runners.items():
            samples[name].append(runner.run_epoch())

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0, iterations=1)
    molecules = len(data.indices)
    for name, values in samples.items():
        assert values and all(v[2] > 0 for v in values), f"{name} ran no training step"
    if smoke:
        return
    params = runners["adam"].params
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    group = (f"training epoch of {molecules} molecules, batch {batch_size}, default model ({params / 1e6:.2f}M "
             f"params), {data.source}, {data.atoms_per_molecule:.1f} atoms / {data.edges_per_molecule:.1f} edges "
             f"per molecule ({DEVICE}{threads})")
    adam_wall = statistics.median(v[0] for v in samples["adam"])
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        report.add(group, name, benchmark, samples=[v[0] for v in values], extra={
            "molecules/s": molecules / wall,
            "x adam molecules/s": adam_wall / wall,
            "wall s/epoch": wall,
            "CPU s/epoch": statistics.median(v[1] for v in values),
            "passes/epoch": statistics.median(v[2] for v in values),
        })


def test_synthetic_graphs_match_the_default_features():
    """The synthetic data fit the default model (what the GPU image without RDKit trains on)."""
    cfg = TrainConfig()
    featurizer = cli_featurizer(cfg)
    dataset = synthetic_dataset(featurizer, 6)
    from graphsam_ext.data import collate

    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.x.shape[1] == featurizer.atom_dim and batch.edge_attr.shape[1] == featurizer.edge_dim
    assert bool((batch.edge_index[0] != batch.edge_index[1]).all()), "no self-loops"
    model = build_model(cfg, dataset)
    out = model(batch)
    assert out.shape == (6, 1) and bool(torch.isfinite(out).all())
