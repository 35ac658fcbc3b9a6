"""collate / BatchGraph: CSR invariants, edge permutation, DataLoader workers, pin_memory, devices."""
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from graphsam_ext.data import BatchGraph, Featurizer, Graph, MoleculeItem, collate, load_dataset, make_loader
from tests.conftest import CUDA

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GRAPHSAM_DATA_DIR") or ROOT.parent / "shared" / "data" / "moleculenet")


def _has_rdkit() -> bool:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return False
    return True


needs_rdkit = pytest.mark.skipif(not _has_rdkit(), reason="RDKit not installed")


@pytest.fixture(scope="module")
def clintox(shared_cache):
    """Salts, dummy atoms and charged species: awkward real molecules."""
    pytest.importorskip("rdkit")
    if not (DATA_DIR / "clintox.csv").is_file():
        pytest.skip(f"MoleculeNet CSVs not found in {DATA_DIR}")
    return load_dataset("clintox", data_dir=DATA_DIR, cache_dir=shared_cache)


def check_invariants(items, batch):
    graphs = [item.graph for item in items]
    n = sum(g.num_nodes for g in graphs)
    e = sum(g.num_edges for g in graphs)
    assert batch.num_graphs == len(items) and batch.num_nodes == n and batch.num_edges == e
    assert batch.rowptr.dtype == batch.col.dtype == batch.perm.dtype == batch.batch.dtype == torch.int64
    # rowptr: N + 1 entries, starts at 0, monotone, ends at the edge count.
    assert batch.rowptr.shape == (n + 1,) and batch.rowptr[0] == 0 and batch.rowptr[-1] == e
    assert torch.all(batch.rowptr[1:] >= batch.rowptr[:-1])
    # Destinations in CSR order: row i holds exactly the edges whose destination is i.
    dst = batch.edge_index[1]
    assert torch.equal(dst, torch.repeat_interleave(torch.arange(n), batch.rowptr[1:] - batch.rowptr[:-1]))
    assert torch.equal(batch.col, batch.edge_index[0])
    # Every edge stays inside its own molecule.
    assert torch.equal(batch.batch[dst], batch.batch[batch.col])
    g_of_edge = batch.batch[dst]
    assert torch.all(dst >= batch.graph_ptr[g_of_edge]) and torch.all(dst < batch.graph_ptr[g_of_edge + 1])
    assert torch.all(batch.col >= batch.graph_ptr[g_of_edge]) and torch.all(batch.col < batch.graph_ptr[g_of_edge + 1])
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(len(items)), torch.tensor([g.num_nodes for g in graphs])))
    # perm maps CSR positions to the concatenated original edges, features moved with it.
    assert torch.equal(torch.sort(batch.perm).values, torch.arange(e))
    offsets, original_index, original_attr = 0, [], []
    for g in graphs:
        original_index.append(g.edge_index + offsets)
        original_attr.append(g.edge_attr)
        offsets += g.num_nodes
    original_index = torch.cat(original_index, 1)
    original_attr = torch.cat(original_attr)
    assert torch.equal(batch.edge_index, original_index[:, batch.perm])
    assert torch.equal(batch.edge_attr, original_attr[batch.perm])
    # Stable sort: within a destination row the original order is kept.
    for i in range(n):
        row = batch.perm[batch.rowptr[i]:batch.rowptr[i + 1]]
        assert torch.all(row[1:] > row[:-1])
    assert torch.equal(batch.x, torch.cat([g.x for g in graphs]))
    assert torch.equal(batch.y, torch.stack([item.y for item in items]))
    assert torch.equal(batch.mask, torch.stack([item.mask for item in items]))
    assert batch.smiles == [item.smiles for item in items]


def test_collate_invariants_on_real_molecules(clintox):
    items = [clintox[i] for i in range(64)]
    check_invariants(items, collate(items))


@needs_rdkit
@pytest.mark.parametrize("pair_distance", [2, "all"])
def test_collate_invariants_with_pair_edges(pair_distance):
    f = Featurizer(pair_distance=pair_distance)
    smiles = ["CC(=O)[O-].[Na+]", "c1ccccc1O", "[Na+]", "CCN(CC)CC.Cl", "C"]
    items = [MoleculeItem(f(s), torch.tensor([float(i)]), torch.tensor([True]), s) for i, s in enumerate(smiles)]
    batch = collate(items)
    check_invariants(items, batch)
    assert batch.edge_attr.shape[1] == f.edge_dim


def test_isolated_trailing_atoms_and_edgeless_batches():
    # The last atom of each graph has no edge: sizes must come from node counts, not index.max().
    g = Graph(torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]]), torch.randn(2, 5))
    lone = Graph(torch.randn(1, 3), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 5))
    items = [MoleculeItem(x, torch.zeros(1), torch.ones(1, dtype=torch.bool), "") for x in (g, lone, g, lone)]
    batch = collate(items)
    check_invariants(items, batch)
    assert batch.rowptr.tolist() == [0, 1, 2, 2, 2, 2, 3, 4, 4, 4, 4]
    only_lone = collate([lone, lone])
    assert only_lone.rowptr.tolist() == [0, 0, 0] and only_lone.edge_index.shape == (2, 0)
    assert only_lone.y.shape == (2, 0)


def test_perm_is_a_real_reordering():
    # Edges listed source-major: (0->2), (1->0), (2->0), (2->1) -> destination order 0,0,1,2.
    g = Graph(torch.zeros(3, 1), torch.tensor([[0, 1, 2, 2], [2, 0, 0, 1]]), torch.arange(4.0)[:, None])
    batch = collate([g])
    assert batch.perm.tolist() == [1, 2, 3, 0]
    assert batch.rowptr.tolist() == [0, 2, 3, 4] and batch.col.tolist() == [1, 2, 2, 0]
    assert batch.edge_attr[:, 0].tolist() == [1.0, 2.0, 3.0, 0.0]


def test_empty_or_wrong_items_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(TypeError, match="MoleculeItem or Graph"):
        collate([{"x": 1}])


def _toy_graph(num_atoms):
    """A ring of ``num_atoms`` atoms with both edge directions, for tests that run without RDKit."""
    src = torch.arange(num_atoms)
    dst = (src + 1) % num_atoms
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    return Graph(torch.randn(num_atoms, 146), edge_index, torch.randn(2 * num_atoms, 14))


def test_batch_pickles_and_moves():
    g = _toy_graph(3)
    batch = collate([g, g])
    clone = pickle.loads(pickle.dumps(batch))
    assert isinstance(clone, BatchGraph) and torch.equal(clone.rowptr, batch.rowptr)
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, BatchGraph) and moved.num_graphs == 2 and torch.equal(moved.x, batch.x)


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.cuda
def test_pinned_batch_moves_to_cuda(device):
    batch = collate([_toy_graph(3), _toy_graph(6)]).pin_memory()
    assert batch.x.is_pinned() and batch.rowptr.is_pinned()
    moved = batch.to(device, non_blocking=True)
    assert moved.x.is_cuda and moved.col.is_cuda and moved.smiles == batch.smiles


def test_dataloader_with_workers_matches_single_process(clintox):
    indices = list(range(0, 200, 3))
    plain = list(make_loader(clintox, indices, batch_size=16))
    workers = list(make_loader(clintox, indices, batch_size=16, num_workers=2))
    assert len(plain) == len(workers) == 5
    for a, b in zip(plain, workers):
        assert a.smiles == b.smiles
        for name in ("x", "edge_attr", "rowptr", "col", "perm", "batch", "y", "mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert plain[0].smiles == [clintox.smiles[i] for i in indices[:16]]


def test_shuffled_loader_is_seeded(clintox):
    order = lambda seed: [s for b in make_loader(clintox, range(100), batch_size=10, shuffle=True, seed=seed) for s in b.smiles]
    assert order(0) == order(0) and order(0) != order(1)
    assert sorted(order(0)) == sorted(clintox.smiles[:100])


def test_loader_with_pin_memory_yields_batches(clintox):
    # Without an accelerator torch skips pinning with a warning; the batches must still arrive.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(make_loader(clintox, range(40), batch_size=20, pin_memory=True))
    assert [b.num_graphs for b in batches] == [20, 20]
    if torch.cuda.is_available():
        assert batches[0].x.is_pinned()


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        make_loader([], None, batch_size=0)
