"""The molecular graph transformer that GraphSAM trains.

    h0 = AtomEmbed(x)                          x: (N, atom_dim) -> (N, hidden)
    e  = BondEmbed(edge_attr)                  (E, edge_dim) -> (E, edge_hidden), shared by all layers
    h_l = GraphTransformerLayer_l(h_{l-1}, rowptr, col, e, bias_l[, bonds])      l = 1..L
    g  = Readout(LayerNorm(h_L), batch)        (G, readout width: hidden, or 2 hidden for mean_sum)
    g  = [BatchNorm(g_avg) | g_sum]            pool_norm: the averaged part only (the mean half of
                                               mean_sum); statistics refreshed before evaluation
    out = MLP([g | mol_features])              (G, num_tasks): logits or standardized values
                                               (mol_features standardized first with mol_scaling)

Attention runs over the edges of the batch's CSR: the bonds, or (``attention="pairs"``) every
atom pair of a molecule within topological distance K as produced by a featurizer built with
``pair_distance=K``. In pair mode each layer adds a learned per-head bias indexed by the pair's
topological distance to the attention score, so the model can learn how fast attention should
fall off with distance instead of fixing it (CoMPT multiplies by exp(-0.1 d)). The distance is
read from the pair edge features, whose last ``distance_bins + 1`` columns are the one-hot
distance 1..bins followed by the "different fragments" flag (see ``graphsam_ext.data``).

With ``local=True`` every layer also runs a sum-aggregating bond message passing beside the
attention (GraphGPS's local block); its edges are the bonds, which in pair mode are the pair
edges at distance 1, so it stays linear in the number of bonds whatever the attention's edges.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from graphsam_ext.errors import UserError
from graphsam_ext.models.readout import READOUT_NAMES, SUM_SCALE, PooledNorm, Readout

ATTENTION_NAMES = ("bonds", "pairs")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`MolecularGraphTransformer` (stored in checkpoints).

    atom_dim / edge_dim: input feature widths (from the featurizer); num_tasks: outputs.
    hidden: node state width; layers: transformer layers; heads: attention heads (hidden must be
    divisible by heads); edge_hidden: width of the shared bond embedding; ffn_multiplier: the
    feed-forward block's width over hidden; readout: mean_sum / mean / sum / attention; head_hidden: width
    of the MLP head's hidden layer (default hidden); attention: bonds or pairs; distance_bins:
    the featurizer's number of distance bins (``Featurizer.distance_bins``, pair mode only);
    mol_dim: width of the molecule descriptors concatenated before the head
    (``Featurizer.mol_dim``; 0: none); sum_scale: the divisor of the sum in the ``mean_sum`` readout;
    local: a bond message-passing block beside the attention in every layer; mol_scaling:
    standardize the molecule descriptors with stored statistics (buffers ``mol_mean`` and
    ``mol_std``, set from the training split by :meth:`MolecularGraphTransformer.fit_mol_scaling`);
    pool_norm: a BatchNorm on the averaged part of the pooled molecule vector (all of a mean or
    attention readout, the mean half of mean_sum; refused with sum), whose evaluation statistics must be
    recomputed for the current weights (:meth:`MolecularGraphTransformer.refresh_pool_norm`)
    before the model is evaluated or saved.
    """

    atom_dim: int
    edge_dim: int
    num_tasks: int
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    edge_hidden: int = 32
    dropout: float = 0.1
    ffn_multiplier: int = 2
    readout: str = "mean_sum"
    head_hidden: int | None = None
    attention: str = "bonds"
    distance_bins: int = 0
    mol_dim: int = 0
    sum_scale: float = SUM_SCALE
    local: bool = True
    mol_scaling: bool = False
    pool_norm: bool = True

    def __post_init__(self):
        for name in ("atom_dim", "edge_dim", "num_tasks", "hidden", "layers", "heads", "edge_hidden",
                     "ffn_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"model {name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise UserError(
                f"model hidden ({self.hidden}) must be divisible by heads ({self.heads}); "
                f"try hidden={self.heads * max(1, round(self.hidden / self.heads))}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model dropout must be in [0, 1), got {self.dropout}")
        for name in ("local", "mol_scaling", "pool_norm"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"model {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.mol_dim, int) or self.mol_dim < 0:
            raise UserError(f"model mol_dim must be an integer >= 0 (Featurizer.mol_dim), got {self.mol_dim!r}")
        if self.readout not in READOUT_NAMES:
            raise UserError(f"readout must be one of {', '.join(READOUT_NAMES)}; got {self.readout!r}")
        if self.pool_norm and self.readout == "sum":
            raise UserError("pool_norm normalizes the averaged part of the readout, and readout 'sum' has none; "
                            "use --no-pool-norm (pool_norm=False) with it, or another readout")
        if self.attention not in ATTENTION_NAMES:
            raise UserError(
                f"attention must be one of {', '.join(ATTENTION_NAMES)}; got {self.attention!r}"
            )
        if self.attention == "pairs" and not (isinstance(self.distance_bins, int) and self.distance_bins >= 1):
            raise UserError(
                "attention='pairs' needs distance_bins >= 1: featurize with Featurizer(pair_distance=K) and "
                "pass distance_bins=featurizer.distance_bins"
            )
        if self.attention == "pairs" and self.edge_dim < self.distance_bins + 2:
            raise UserError(
                f"edge_dim {self.edge_dim} is too small to hold {self.distance_bins} distance bins; "
                "pass the featurizer's edge_dim and distance_bins"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From a stored configuration (a checkpoint's); a checkpoint from before the bond block,
        the descriptor scaling or the pooled BatchNorm existed has no ``local`` / ``mol_scaling``
        / ``pool_norm`` and was trained without them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**{"local": False, "mol_scaling": False, "pool_norm": False, **d})

    def to_dict(self) -> dict:
        return asdict(self)


class MolecularGraphTransformer(nn.Module):
    """Sparse graph transformer over a :class:`~graphsam_ext.data.BatchGraph`; see the module
    docstring for the equations and :class:`ModelConfig` for the knobs."""

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = ModelConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a ModelConfig or keyword arguments, not both")
        self.config = config
        from graphsam_ext.nn import GraphTransformerLayer, ModelDropout

        c = config
        self.atom_embed = nn.Sequential(nn.Linear(c.atom_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.hidden))
        self.bond_embed = nn.Sequential(nn.Linear(c.edge_dim, c.edge_hidden), nn.GELU())
        self.layers = nn.ModuleList(
            GraphTransformerLayer(c.hidden, c.heads, edge_dim=c.edge_hidden, dropout=c.dropout,
                                  ffn_multiplier=c.ffn_multiplier, local=c.local)
            for _ in range(c.layers)
        )
        if c.attention == "pairs":
            # entries 0..bins-1: distance 1..bins; entry bins: atoms in different fragments
            self.distance_bias = nn.ModuleList(nn.Embedding(c.distance_bins + 1, c.heads) for _ in range(c.layers))
            for emb in self.distance_bias:
                nn.init.zeros_(emb.weight)
        else:
            self.distance_bias = None
        self.norm = nn.LayerNorm(c.hidden)
        self.readout = Readout(c.readout, c.hidden, c.sum_scale)
        head_hidden = c.head_hidden or c.hidden
        self.head = nn.Sequential(
            nn.Linear(self.readout.out_dim + c.mol_dim, head_hidden), nn.GELU(), ModelDropout(c.dropout),
            nn.Linear(head_hidden, c.num_tasks)
        )
        if c.mol_dim and c.mol_scaling:
            self.register_buffer("mol_mean", torch.zeros(c.mol_dim))
            self.register_buffer("mol_std", torch.ones(c.mol_dim))
        # the averaged part of the readout: all of it, or the mean half of mean_sum (the sum half,
        # which carries the molecule's size, is left as it is)
        self.pool_norm = PooledNorm(c.hidden) if c.pool_norm else None

    @torch.no_grad()
    def fit_mol_scaling(self, features: torch.Tensor) -> None:
        """Set the descriptor statistics from the training molecules' ``mol_features``
        (G, mol_dim): their mean and standard deviation, a column that does not vary keeping
        scale 1. A model built without ``mol_scaling`` has nothing to fit and refuses."""
        if not (self.config.mol_dim and self.config.mol_scaling):
            raise UserError("fit_mol_scaling: this model was built without molecule descriptor scaling "
                            "(ModelConfig mol_dim > 0 and mol_scaling=True)")
        features = torch.as_tensor(features, dtype=torch.float64)
        if features.ndim != 2 or features.shape[1] != self.config.mol_dim or features.shape[0] < 1:
            raise UserError(f"fit_mol_scaling: features must be (molecules >= 1, {self.config.mol_dim}), got "
                            f"{tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise UserError("fit_mol_scaling: the training molecules' descriptors contain NaN or infinity")
        std = features.std(dim=0, unbiased=False)
        self.mol_mean.copy_(features.mean(dim=0))
        self.mol_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    @torch.no_grad()
    def refresh_pool_norm(self, batches) -> None:
        """Set the pooled BatchNorm's evaluation statistics to the exact mean and variance of
        the pooled vectors of ``batches`` (BatchGraphs on the model's device, normally the whole
        training split) under the current weights, with dropout off. Call it after training
        and before evaluating or saving: on a series of similar molecules the pooled vectors
        differ little, so running averages taken while the weights move lag far behind them and
        evaluation is off by many of their standard deviations. Nothing to do without
        ``pool_norm``."""
        if self.pool_norm is None:
            return
        was_training = self.training
        self.eval()
        try:
            count, total, squares = 0, None, None
            for batch in batches:
                g = self._pooled(as_csr_batch(batch))[:, :self.config.hidden].to(torch.float64)
                count += g.shape[0]
                total = g.sum(0) if total is None else total + g.sum(0)
                squares = (g * g).sum(0) if squares is None else squares + (g * g).sum(0)
            if not count:
                raise UserError("refresh_pool_norm: no molecules given; pass the training batches")
            mean = total / count
            var = (squares / count - mean * mean).clamp_min(0.0)
            self.pool_norm.set_statistics(mean, var)
        finally:
            self.train(was_training)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, batch) -> torch.Tensor:
        """batch: a BatchGraph (x (N, atom_dim), edge_attr (E, edge_dim) in CSR order, rowptr,
        col, batch, num_graphs), or a ``torch_geometric.data.Batch`` / ``Data`` (x, edge_index,
        edge_attr in edge_index's order, batch; optional mol_features (G, mol_dim)), whose CSR is
        built here once for all layers. Returns (G, num_tasks): logits or standardized values."""
        batch = as_csr_batch(batch)
        g = self._pooled(batch)
        if self.pool_norm is not None:
            g = torch.cat([self.pool_norm(g[:, :self.config.hidden]), g[:, self.config.hidden:]], dim=-1)
        if self.config.mol_dim:
            g = torch.cat([g, self._mol_features(batch)], dim=-1)
        return self.head(g)

    def _pooled(self, batch) -> torch.Tensor:
        """The readout's molecule vectors (G, readout width) of a CSR batch."""
        if batch.x.shape[-1] != self.config.atom_dim or batch.edge_attr.shape[-1] != self.config.edge_dim:
            raise UserError(
                f"batch features (atoms {batch.x.shape[-1]}, edges {batch.edge_attr.shape[-1]}) do not match "
                f"the model's (atoms {self.config.atom_dim}, edges {self.config.edge_dim}); featurize with the "
                "featurizer the model was built for"
            )
        h = self.atom_embed(batch.x)
        e = self.bond_embed(batch.edge_attr)
        distance = self._distance_index(batch.edge_attr)
        biases = None if distance is None else [emb(distance) for emb in self.distance_bias]
        bonds = self._bonds(batch.rowptr, batch.col, e, distance) if self.config.local else None
        for i, layer in enumerate(self.layers):
            h = layer(h, batch.rowptr, batch.col, e, None if biases is None else biases[i], bonds)
        return self.readout(self.norm(h), batch.batch, batch.num_graphs)

    def _mol_features(self, batch) -> torch.Tensor:
        feats = getattr(batch, "mol_features", None)
        if feats is None or feats.shape != (batch.num_graphs, self.config.mol_dim):
            got = None if feats is None else tuple(feats.shape)
            raise UserError(
                f"the model was built with {self.config.mol_dim} molecule descriptors but the batch has "
                f"mol_features {got}; featurize with Featurizer(descriptors=True), as the model was trained"
            )
        feats = feats.to(self.head[0].weight.dtype)
        if self.config.mol_scaling:
            feats = (feats - self.mol_mean.to(feats.dtype)) / self.mol_std.to(feats.dtype)
        return feats

    def _distance_index(self, edge_attr: torch.Tensor):
        """(E,) index into the distance biases from the one-hot distance block of the edges
        (0: distance 1, a bond); None in bond mode."""
        if self.distance_bias is None:
            return None
        bins = self.config.distance_bins
        return edge_attr[:, edge_attr.shape[1] - bins - 1:].argmax(dim=-1)

    @staticmethod
    def _bonds(rowptr: torch.Tensor, col: torch.Tensor, e: torch.Tensor, distance):
        """(dst, src, bond embedding) of the directed bonds: every edge in bond mode, the pair
        edges at distance 1 in pair mode (selecting them reads their count back to the host)."""
        dst = torch.repeat_interleave(torch.arange(rowptr.numel() - 1, device=col.device), rowptr.diff(),
                                      output_size=col.numel())
        if distance is None:
            return dst, col, e
        keep = (distance == 0).nonzero().squeeze(1)
        return dst.index_select(0, keep), col.index_select(0, keep), e.index_select(0, keep)


class _CSRBatch(NamedTuple):
    x: torch.Tensor
    edge_attr: torch.Tensor
    rowptr: torch.Tensor
    col: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    mol_features: torch.Tensor | None


def as_csr_batch(batch):
    """``batch`` itself when it carries a CSR (a BatchGraph); for a PyG-style batch (``x``,
    ``edge_index`` (2, E) source -> destination in any order, ``edge_attr`` in that order,
    ``batch`` or None for one graph, ``num_graphs``) the same fields with the CSR built once by
    :func:`graphsam_ext.ops.build_csr` and ``edge_attr`` permuted into CSR order. Duck-typed:
    torch_geometric is never imported."""
    if getattr(batch, "rowptr", None) is not None:
        return batch
    x = getattr(batch, "x", None)
    edge_index = getattr(batch, "edge_index", None)
    edge_attr = getattr(batch, "edge_attr", None)
    if x is None or edge_index is None or edge_attr is None:
        missing = [n for n, v in (("x", x), ("edge_index", edge_index), ("edge_attr", edge_attr)) if v is None]
        raise UserError(
            f"model input {type(batch).__name__} has no {', '.join(missing)}: pass a BatchGraph (graphsam_ext.data."
            "collate) or a torch_geometric Batch with x, edge_index and edge_attr (bond features)")
    from graphsam_ext.ops import build_csr

    rowptr, col, perm = build_csr(edge_index, x.shape[0])
    node_graph = getattr(batch, "batch", None)
    if node_graph is None:
        node_graph = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        num_graphs = 1
    else:
        num_graphs = getattr(batch, "num_graphs", None)
        num_graphs = int(node_graph.max()) + 1 if num_graphs is None else int(num_graphs)
    return _CSRBatch(x, edge_attr.index_select(0, perm), rowptr, col, node_graph, num_graphs,
                     getattr(batch, "mol_features", None))
