"""Batching: many ``Graph`` s -> one ``BatchGraph`` whose edges are in CSR order by destination.

The graph-attention kernels walk the incoming edges of each destination node as one contiguous
row (``rowptr[i]:rowptr[i + 1]``), so collate sorts the edges once per batch, on the CPU, in the
DataLoader worker, instead of once per layer on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import NamedTuple, Sequence

import torch

from graphsam_ext.data.graph import Graph


class MoleculeItem(NamedTuple):
    """One dataset entry. y: (T,) float32 labels (0 where missing); mask: (T,) bool, True = present."""

    graph: Graph
    y: torch.Tensor
    mask: torch.Tensor
    smiles: str


@dataclass
class BatchGraph:
    """G molecules as one disconnected graph, edges sorted (stably) by destination.

    x:          (N, atom_dim) float32 atom features of all molecules, molecule after molecule
    edge_index: (2, E) int64 [source; destination] in CSR order (destinations non-decreasing)
    edge_attr:  (E, edge_dim) float32 in CSR order: ``edge_attr[k]`` belongs to ``edge_index[:, k]``
    rowptr:     (N + 1,) int64; the incoming edges of node i are positions rowptr[i]:rowptr[i + 1]
    col:        (E,) int64 source node of each edge in CSR order (= edge_index[0])
    perm:       (E,) int64; CSR position k holds edge perm[k] of the concatenated input edge list
    batch:      (N,) int64 molecule of each node
    graph_ptr:  (G + 1,) int64; the nodes of molecule g are graph_ptr[g]:graph_ptr[g + 1]
    num_graphs: G
    y, mask:    (G, T) float32 labels and bool presence mask
    smiles:     list of G SMILES strings
    mol_features: (G, D) float32 molecule descriptors, or None (graphs featurized without them)
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    rowptr: torch.Tensor
    col: torch.Tensor
    perm: torch.Tensor
    batch: torch.Tensor
    graph_ptr: torch.Tensor
    num_graphs: int
    y: torch.Tensor
    mask: torch.Tensor
    smiles: list
    mol_features: torch.Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.col.shape[0])

    def _map_tensors(self, fn) -> "BatchGraph":
        return replace(
            self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        )

    def to(self, device, non_blocking: bool = False) -> "BatchGraph":
        """A copy with every tensor on ``device`` (non_blocking pays off with pinned memory)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "BatchGraph":
        """A copy in page-locked memory; DataLoader(pin_memory=True) calls this on each batch."""
        return self._map_tensors(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.num_graphs


def _as_item(item) -> MoleculeItem:
    if isinstance(item, MoleculeItem):
        return item
    if isinstance(item, Graph):
        # Unlabelled graphs (prediction): zero tasks.
        return MoleculeItem(item, torch.zeros(0), torch.zeros(0, dtype=torch.bool), "")
    raise TypeError(f"collate: items must be MoleculeItem or Graph, got {type(item).__name__}")


def collate(items: Sequence) -> BatchGraph:
    """Concatenate molecules, offset their node indices and build the CSR by destination.

    Sizes come from the node counts of the graphs, never from ``edge_index.max()``, so trailing
    isolated atoms (a lone ion in a salt) keep their rows. The sort is stable, so edges with the
    same destination keep their original relative order and the result is deterministic.
    """
    if len(items) == 0:
        raise ValueError("collate: got an empty list of items; a batch needs at least one molecule")
    items = [_as_item(item) for item in items]
    graphs = [item.graph for item in items]
    num_nodes = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
    graph_ptr = torch.zeros(len(graphs) + 1, dtype=torch.long)
    torch.cumsum(num_nodes, 0, out=graph_ptr[1:])
    total_nodes = int(graph_ptr[-1])

    edge_counts = torch.tensor([g.num_edges for g in graphs], dtype=torch.long)
    offsets = torch.repeat_interleave(graph_ptr[:-1], edge_counts)
    edge_index = torch.cat([g.edge_index for g in graphs], dim=1) + offsets
    edge_attr = torch.cat([g.edge_attr for g in graphs], dim=0)

    dst = edge_index[1]
    perm = torch.sort(dst, stable=True).indices
    rowptr = torch.zeros(total_nodes + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(dst, minlength=total_nodes), 0, out=rowptr[1:])
    edge_index = edge_index[:, perm]

    return BatchGraph(
        x=torch.cat([g.x for g in graphs], dim=0),
        edge_index=edge_index,
        edge_attr=edge_attr[perm],
        rowptr=rowptr,
        col=edge_index[0].clone(),
        perm=perm,
        batch=torch.repeat_interleave(torch.arange(len(graphs)), num_nodes),
        graph_ptr=graph_ptr,
        num_graphs=len(graphs),
        y=torch.stack([item.y for item in items]),
        mask=torch.stack([item.mask for item in items]),
        smiles=[item.smiles for item in items],
        mol_features=_stack_mol_features(graphs),
    )


def _stack_mol_features(graphs):
    have = [g.mol_features is not None for g in graphs]
    if not any(have):
        return None
    if not all(have):
        raise ValueError("collate: some graphs have molecule descriptors (mol_features) and some do not; featurize "
                         "every molecule with the same Featurizer")
    return torch.stack([g.mol_features for g in graphs])


def make_loader(
    dataset,
    indices=None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset[indices]`` (all items when indices is None) yielding BatchGraph.

    shuffle uses its own generator seeded with ``seed``, so the batch order is reproducible and
    independent of the global RNG.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"make_loader: batch_size must be a positive integer, got {batch_size!r}")
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return torch.utils.data.DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
