"""The foreach engine: the reference engine's math with ``torch._foreach_*`` ops and torch's
foreach Adam / SGD (one kernel launch per op for all tensors of a device and dtype)."""
from __future__ import annotations

import torch
from torch import Tensor

from graphsam_ext.optim.engines.interface import is_skipped
from graphsam_ext.optim.engines.pertensor import PerTensorEngine


class ForeachEngine(PerTensorEngine):
    foreach = True

    def sum_squares(self, source="grad", weight_power=0, shift=0.0, per_tensor=False) -> Tensor:
        xs = self._tensors(source)
        if weight_power:
            w = torch._foreach_abs(self.params)
            if weight_power == 2:
                torch._foreach_mul_(w, w)
            xs = torch._foreach_mul(xs, w)
        if shift:
            xs = torch._foreach_add(xs, shift)
        sq = torch.stack(torch._foreach_norm(xs, 2, dtype=torch.float64)) ** 2
        return sq if per_tensor else sq.sum()

    def _unscale(self, grads: list) -> None:
        """torch's fused check-and-unscale (the one GradScaler.unscale_ runs), per dtype."""
        inv = self.grad_scale.double().reciprocal().float()
        by_dtype: dict = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, self.found_inf, inv)

    def combine(self, target, terms, wide=False) -> None:
        dst = self._tensors(target)
        like = [d.double() for d in dst] if wide else dst
        value = None
        for t in terms:
            srcs = self._tensors(t.source)
            term = torch._foreach_mul([x.double() for x in srcs] if wide else srcs, self._scales(t.scale, like))
            if value is None:
                value = term
            else:
                torch._foreach_add_(value, term)
        torch._foreach_copy_(dst, value)

    def perturb(self, source, scale, adaptive, skip) -> None:
        src = self._tensors(source)
        self.perturbed = True
        torch._foreach_copy_(self.backup, self.params)
        if is_skipped(skip):
            return
        t = torch._foreach_mul(self.params, self.params) if adaptive else src
        if adaptive:
            torch._foreach_mul_(t, src)
        t = torch._foreach_mul(t, self._scales(scale, self.params))
        torch._foreach_add_(self.params, t)

    def restore(self) -> None:
        self.perturbed = False
        torch._foreach_copy_(self.params, self.backup)

    def direction_update(self, inv_norm, beta, init, skip) -> Tensor:
        ds, gs = self._tensors("direction"), self._tensors("grad")
        if not is_skipped(skip):
            t = torch._foreach_mul(gs, self._scales(inv_norm, gs))
            if init:
                torch._foreach_copy_(ds, t)
            else:
                torch._foreach_mul_(ds, beta)
                torch._foreach_add_(ds, t, alpha=1.0 - beta)
        return (torch.stack(torch._foreach_norm(ds, 2, dtype=torch.float64)) ** 2).sum()
