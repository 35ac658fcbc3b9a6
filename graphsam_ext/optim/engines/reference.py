"""The reference engine: a loop over parameter tensors with ``ops.reference`` and torch's
single-tensor Adam / SGD. Readable, and the oracle of the parity tests."""
from __future__ import annotations

import torch
from torch import Tensor

from graphsam_ext.ops import reference
from graphsam_ext.optim.engines.pertensor import PerTensorEngine


class ReferenceEngine(PerTensorEngine):
    foreach = False

    def sum_squares(self, source="grad", weight_power=0, shift=0.0, per_tensor=False) -> Tensor:
        sq = torch.stack([reference.sum_squares(x.reshape(-1), p.reshape(-1), None, weight_power, shift)
                          for x, p in zip(self._tensors(source), self.params)])
        return sq if per_tensor else sq.sum()

    def perturb(self, source, scale, adaptive, skip) -> None:
        self.perturbed = True
        for p, b, d, s in zip(self.params, self.backup, self._tensors(source), self._scales(scale, self.params)):
            reference.perturb_(p.data, b, d, s, None, adaptive, skip)

    def restore(self) -> None:
        self.perturbed = False
        for p, b in zip(self.params, self.backup):
            p.data.copy_(b)

    def direction_update(self, inv_norm, beta, init, skip) -> Tensor:
        gs = self._tensors("grad")
        total = torch.zeros((), dtype=torch.float64, device=gs[0].device)
        for d, g, inv in zip(self._tensors("direction"), gs, self._scales(inv_norm, gs)):
            total = total + reference.direction_update_(d, g, inv, None, beta, init, skip)
        return total
