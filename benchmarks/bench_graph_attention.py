"""Sparse graph attention, forward + backward: graphsam_ext's fused op against its peers.

Peers, all computing the same function of the same (num_nodes, heads, dim) q, k, v over
molecule-like graphs (random trees of 20-30 atoms plus ring bonds, both directions):
  ours       graphsam_ext.ops.graph_attention (native kernel; CSR by destination)
  reference  graphsam_ext.ops.reference.graph_attention (gather + segment softmax + index_add,
             the pure-PyTorch fallback)
  pyg        torch_geometric TransformerConv.propagate (its message passing, no projections)
  dense      torch scaled_dot_product_attention on molecules padded to the largest one, with a
             per-molecule boolean mask of the bonds (inputs already padded: no conversion timed)

Time: pytest-benchmark rounds of forward + backward (gradients of q, k, v for a fixed upstream
gradient). Peak memory: measured once per case, outside the timed rounds. On CUDA it is
torch.cuda.max_memory_allocated() above what was allocated before the call. On the CPU there is
no allocator statistic, so the torch profiler (profile_memory=True) records every tensor
allocation and free during the call; the peak is the maximum of their running sum. That counts
tensor memory only (the native kernel's per-thread scratch, O(threads x heads x dim), is not a
tensor), excludes the inputs, and includes the gradients returned.

Run:      pytest benchmarks/bench_graph_attention.py    (GRAPHSAM_BENCH_DEVICE=cuda on a GPU machine)
Smoke:    pytest benchmarks/bench_graph_attention.py --benchmark-disable
A summary table (one row per case: times, speed-up and memory ratio against PyG) is printed at
the end of the module; the side-by-side report of benchmarks/conftest.py gets every entry too.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks import conftest
from graphsam_ext import _backend
from graphsam_ext.ops import build_csr, graph_attention, reference

pyg_nn = pytest.importorskip("torch_geometric.nn")

MOLECULES = [32, 128, 512]
HEADS = [4, 8]
DIMS = [32, 64]
IMPLS = ["pyg", "ours", "reference", "dense"]  # pyg first: the others report ratios to it
DEVICE = os.environ.get("GRAPHSAM_BENCH_DEVICE", "cpu")
# float32 everywhere; on CUDA also bfloat16, the training dtype there
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
CONFIGS = [(dtype, m, h, d) for dtype in DTYPES for m in MOLECULES for h in HEADS for d in DIMS]
COLUMNS = ["ours", "reference", "pyg", "dense"]
_RESULTS: dict = {}


def molecule_graphs(num_molecules: int, seed: int = 0, min_atoms: int = 20, max_atoms: int = 30):
    """(edge_index (2, E) unsorted, atoms per molecule (B,)): trees plus ring bonds, no duplicates."""
    gen = torch.Generator().manual_seed(seed)
    parts, sizes, offset = [], [], 0
    for _ in range(num_molecules):
        n = int(torch.randint(min_atoms, max_atoms + 1, (1,), generator=gen))
        child = torch.arange(1, n)
        parent = (torch.rand(n - 1, generator=gen) * child).long()
        rings = torch.randint(0, n, (2, n // 10 + 1), generator=gen)
        und = torch.cat([torch.stack([parent, child]), rings[:, rings[0] != rings[1]]], 1)
        parts.append(torch.cat([und, und.flip(0)], 1) + offset)
        sizes.append(n)
        offset += n
    edge_index = torch.cat(parts, 1)
    edge_index = torch.unique(edge_index[1] * offset + edge_index[0])  # drop repeated ring bonds
    edge_index = torch.stack([edge_index % offset, edge_index // offset])
    return edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)], torch.tensor(sizes)


class Problem:
    """One benchmark case: inputs in the layouts each peer needs, built outside the timing."""

    def __init__(self, molecules: int, heads: int, dim: int, device: str, dtype=torch.float32):
        edge_index, sizes = molecule_graphs(molecules)
        num_nodes = int(sizes.sum())
        rowptr, col, _ = build_csr(edge_index, num_nodes)
        self.device, self.heads, self.dim = device, heads, dim
        self.num_nodes, self.num_edges = num_nodes, col.numel()
        self.rowptr, self.col = rowptr.to(device), col.to(device)
        dst = reference.csr_destinations(rowptr, col.numel())
        self.edge_index = torch.stack([col, dst]).to(device)
        gen = torch.Generator().manual_seed(1)
        self.qkv = [torch.randn(num_nodes, heads, dim, generator=gen).to(device=device, dtype=dtype)
                    for _ in range(3)]
        self.grad = torch.randn(num_nodes, heads, dim, generator=gen).to(device=device, dtype=dtype)
        self.conv = pyg_nn.TransformerConv(heads * dim, dim, heads=heads).to(device)
        # dense layout: (B, heads, Nmax, dim), mask (B, 1, Nmax, Nmax) true where dst may attend src
        graph = torch.repeat_interleave(torch.arange(molecules), sizes)
        start = torch.cumsum(sizes, 0) - sizes
        slot = torch.arange(num_nodes) - start[graph]
        n_max = int(sizes.max())
        mask = torch.zeros(molecules, n_max, n_max, dtype=torch.bool)
        mask[graph[dst], slot[dst], slot[col]] = True
        pad = torch.ones(molecules, n_max, dtype=torch.bool)
        pad[graph, slot] = False
        mask |= torch.diag_embed(pad)  # padding rows attend to themselves: no all-masked row (NaN)
        self.mask = mask.unsqueeze(1).to(device)
        self.graph, self.slot = graph.to(device), slot.to(device)
        self.dense_qkv = [self.to_dense(t) for t in self.qkv]
        self.dense_grad = self.to_dense(self.grad)

    def to_dense(self, t):
        out = t.new_zeros(self.mask.shape[0], self.mask.shape[-1], self.heads, self.dim)
        out[self.graph, self.slot] = t
        return out.transpose(1, 2).contiguous()

    def from_dense(self, t):
        return t.transpose(1, 2)[self.graph, self.slot]

    def forward(self, impl: str, q, k, v):
        if impl == "ours":
            return graph_attention(q, k, v, self.rowptr, self.col)
        if impl == "reference":
            return reference.graph_attention(q, k, v, self.rowptr, self.col, None, None, self.dim ** -0.5)
        if impl == "pyg":
            return self.conv.propagate(self.edge_index, query=q, key=k, value=v, edge_attr=None)
        if impl == "dense":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        raise ValueError(impl)

    def step_fn(self, impl: str):
        """A closure running forward + backward once (fresh gradients each time)."""
        dense = impl == "dense"
        leaves = [t.clone().requires_grad_(True) for t in (self.dense_qkv if dense else self.qkv)]
        grad = self.dense_grad if dense else self.grad

        def step():
            out = self.forward(impl, *leaves)
            return torch.autograd.grad(out, leaves, grad)

        return step


def peak_bytes(fn, device: str) -> int:
    """Peak tensor memory allocated by fn() above what existed before (see module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    if not _RESULTS:
        return
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    lines = ["", "graph attention forward+backward (median ms, x = PyG time / ours, peak MiB)",
             "| device | dtype | molecules | heads | dim | ours ms | reference ms | pyg ms | dense ms | speedup vs pyg "
             "| ours MiB | reference MiB | pyg MiB | dense MiB | memory vs pyg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(_RESULTS):
        row = _RESULTS[key]
        if not all(impl in row for impl in IMPLS):
            continue
        ms = [row[i][0] * 1e3 if row[i][0] is not None else math.nan for i in COLUMNS]
        mib = [row[i][1] / 2**20 for i in COLUMNS]
        lines.append("| " + " | ".join(str(x) for x in key) + " | " + " | ".join(f"{t:.2f}" for t in ms)
                     + f" | {ms[2] / ms[0]:.1f}x | " + " | ".join(f"{m:.2f}" for m in mib)
                     + f" | {mib[0] / mib[2]:.2f} |")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)


@pytest.mark.skipif(not _backend.use_native(DEVICE), reason=f"no native kernels for {DEVICE}")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,molecules,heads,dim", CONFIGS,
                         ids=[f"{str(c[0]).removeprefix('torch.')}-mol{c[1]}-h{c[2]}-d{c[3]}" for c in CONFIGS])
def test_graph_attention(benchmark, report, impl, dtype, molecules, heads, dim):
    device = DEVICE
    problem = Problem(molecules, heads, dim, device, dtype)
    step = problem.step_fn(impl)
    step()  # warm-up (first-call allocations, lazy init)
    peak = peak_bytes(step, device)
    if device == "cuda":
        def run():
            step()
            torch.cuda.synchronize()
    else:
        run = step
    dtype_name = str(dtype).removeprefix("torch.")
    key = (device, dtype_name, molecules, heads, dim)
    group = f"graph attention fwd+bwd {device} {dtype_name}, {molecules} molecules, heads {heads}, dim {dim}"
    conftest.BASELINES[group] = "pyg"
    benchmark.group = group
    benchmark.extra_info.update(peak_bytes=peak, num_nodes=problem.num_nodes, num_edges=problem.num_edges,
                                threads=torch.get_num_threads())
    benchmark(run)
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    row = _RESULTS.setdefault(key, {})
    row[impl] = (median, peak)
    memory_ratio = peak / row["pyg"][1] if "pyg" in row and row["pyg"][1] else math.nan
    report.add(group, impl, benchmark, extra={"peak MiB": peak / 2**20, "memory x pyg": memory_ratio})


def test_peers_agree():
    """The peers compute the same function (a guard on the benchmark itself, not a timing)."""
    problem = Problem(8, 4, 16, DEVICE, dtype=torch.float64)
    problem.conv.double()
    q, k, v = problem.qkv
    expect = problem.forward("reference", q, k, v)
    torch.testing.assert_close(problem.forward("ours", q, k, v), expect)
    torch.testing.assert_close(problem.forward("pyg", q, k, v), expect)
    dense = problem.forward("dense", *problem.dense_qkv)
    torch.testing.assert_close(problem.from_dense(dense), expect)
