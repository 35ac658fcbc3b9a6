"""Graph readouts: pool node states (N, hidden) into one vector per molecule (G, hidden)."""
from __future__ import annotations

import torch
from torch import nn

READOUT_NAMES = ("mean_sum", "mean", "sum", "attention")
# The default divisor of the sum half of ``mean_sum``: about the size of a small drug-like
# molecule, so the sum starts on the mean's scale; 40 keeps SAM's rho = 0.05 gentler but was
# worse for Adam on validation (docs/model.md, "The sum's scale and SAM's rho").
SUM_SCALE = 10.0


def _segment_sum(x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    out = x.new_zeros((num_graphs,) + tuple(x.shape[1:]))
    return out.index_add_(0, batch, x)


class Readout(nn.Module):
    """``mean`` / ``sum`` of node states per graph, ``mean_sum``, or ``attention`` pooling.

    mean_sum: [mean_i h_i | (sum_i h_i) / sum_scale], (G, 2 hidden). The mean alone hides how big
    a molecule is, the strongest single signal of solubility and lipophilicity; a raw sum carries
    it but starts tens of times larger than the mean. ``out_dim`` gives the output width.

    Attention pooling: a_i = softmax over the atoms of its molecule of w^T h_i, out = sum_i a_i h_i.
    A molecule without atoms (possible after filtering) gives a zero vector.
    """

    def __init__(self, kind: str, hidden: int, sum_scale: float = SUM_SCALE):
        super().__init__()
        if not sum_scale > 0:
            raise ValueError(f"readout sum_scale must be > 0, got {sum_scale!r}")
        self.sum_scale = float(sum_scale)
        if kind not in READOUT_NAMES:
            raise ValueError(f"readout must be one of {', '.join(READOUT_NAMES)}; got {kind!r}")
        self.kind = kind
        self.gate = nn.Linear(hidden, 1) if kind == "attention" else None
        self.out_dim = 2 * hidden if kind == "mean_sum" else hidden

    def forward(self, h: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """h: (N, hidden); batch: (N,) graph index of each node -> (num_graphs, out_dim)."""
        if self.kind == "sum":
            return _segment_sum(h, batch, num_graphs)
        if self.kind in ("mean", "mean_sum"):
            total = _segment_sum(h, batch, num_graphs)
            counts = torch.bincount(batch, minlength=num_graphs).clamp_min(1).to(h.dtype)
            mean = total / counts.unsqueeze(-1)
            return mean if self.kind == "mean" else torch.cat([mean, total / self.sum_scale], dim=-1)
        score = self.gate(h).squeeze(-1)
        # subtract each molecule's max score so exp() cannot overflow
        seg_max = torch.full((num_graphs,), float("-inf"), dtype=score.dtype, device=score.device)
        seg_max = seg_max.scatter_reduce(0, batch, score, reduce="amax", include_self=True)
        weight = torch.exp(score - seg_max[batch])
        denom = _segment_sum(weight, batch, num_graphs).clamp_min(torch.finfo(h.dtype).tiny)
        return _segment_sum(h * (weight / denom[batch]).unsqueeze(-1), batch, num_graphs)


class PooledNorm(nn.Module):
    """A BatchNorm across the molecules of a batch whose evaluation statistics are set only by
    :meth:`set_statistics` (``MolecularGraphTransformer.refresh_pool_norm``), never by running
    averages. Training normalizes with the batch's own mean and variance and leaves the stored
    ones as they are, so a forward pass changes no state (a SAM step's extra passes included);
    evaluation, and a training batch of one molecule, use the stored ones. Parameters and
    buffers are named as torch's BatchNorm1d names them (weight, bias, running_mean, running_var)."""

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self.training and x.shape[0] > 1
        stored_mean, stored_var = (None, None) if batch_stats else (self.running_mean, self.running_var)
        return nn.functional.batch_norm(x, stored_mean, stored_var, self.weight, self.bias, training=batch_stats,
                                        eps=self.eps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a BatchNorm1d's state (as an earlier build of this layer stored it) also has the count of
        # batches its running averages saw, which this layer does not keep
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
