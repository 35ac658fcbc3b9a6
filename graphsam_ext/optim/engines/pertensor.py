"""What the two per-tensor engines (reference loop and foreach) share: state, gradients, the
generic verbs and the base update through ``BASE_UPDATES``; the math of each is in its own module."""
from __future__ import annotations

import torch
from torch import Tensor

from graphsam_ext.ops import reference
from graphsam_ext.optim.engines.interface import GRAD, Engine, is_skipped, trainable_groups


class PerTensorEngine(Engine):
    """Parameters, gradients and state as the parameters' own tensors (lists in ``params`` order)."""

    foreach = False

    def __init__(self, optimizer, buffers: tuple):
        self.opt = optimizer
        self.base = optimizer.base_spec
        self.group_params = trainable_groups(optimizer.param_groups)
        self.params = [p for ps in self.group_params for p in ps]
        self.buffer_keys = tuple(buffers)
        for p in self.params:
            self._init_state(optimizer.state[p], p)
        self.backup = [torch.empty_like(p) for p in self.params]
        self.perturbed = False

    def _init_state(self, st: dict, p: Tensor) -> None:
        if self.base.fused:
            for key in self.base.state_keys:
                st.setdefault(key, torch.zeros_like(p, memory_format=torch.preserve_format))
            st.setdefault("step", torch.tensor(0.0))
        for key in self.buffer_keys:
            st.setdefault(key, torch.zeros_like(p))

    def adopt_loaded_state(self) -> None:
        for p in self.params:
            st = self.opt.state[p]
            if st.get("momentum_buffer", 0) is None:
                st["momentum_buffer"] = torch.zeros_like(p)
            self._init_state(st, p)

    # -- gradients -------------------------------------------------------------------------
    def release(self, params: list) -> None:
        for p in params:
            p.grad = None

    def prepare(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                raise ValueError("params: sparse gradients are not supported; use dense embeddings")

    def unscale(self) -> None:
        self._unscale([p.grad for p in self.params])

    def _unscale(self, grads: list) -> None:
        """grads <- grads / grad_scale in place; found_inf <- 1 if one is not finite (the oracle's op)."""
        for g in grads:
            reference.unscale_sum_squares_(g, self.grad_scale, self.found_inf, None, None, 0, 0.0)

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()

    def _tensors(self, source: str) -> list:
        if source == GRAD:
            return [p.grad for p in self.params]
        return [self.opt.state[p][source] for p in self.params]

    def _scales(self, scale: Tensor, dtype_of: list) -> list:
        if scale.dim() == 0:
            return [scale.to(x.dtype) for x in dtype_of]
        return [s.to(x.dtype) for s, x in zip(scale.unbind(), dtype_of)]

    # -- generic verbs ---------------------------------------------------------------------
    def dot(self, a: str, b: str) -> Tensor:
        return torch.stack([torch.dot(x.reshape(-1).double(), y.reshape(-1).double())
                            for x, y in zip(self._tensors(a), self._tensors(b))]).sum()

    def combine(self, target: str, terms: list, wide: bool = False) -> None:
        dst = self._tensors(target)
        like = [d.double() for d in dst] if wide else dst
        parts = [(self._scales(t.scale, like), self._tensors(t.source)) for t in terms]
        for i, d in enumerate(dst):
            value = None
            for scales, srcs in parts:
                term = (srcs[i].double() if wide else srcs[i]) * scales[i]
                value = term if value is None else value + term
            d.copy_(value)

    def snapshot(self, source: str) -> list:
        return [x.clone() for x in self._tensors(source)]

    def revert(self, source: str, skip: Tensor, saved: list) -> None:
        for x, old in zip(self._tensors(source), saved):
            x.copy_(torch.where(skip, old, x))

    # -- base update -----------------------------------------------------------------------
    def base_step(self, skip: Tensor | None, restore: bool, fold: tuple | None = None) -> Tensor | None:
        # the fold runs first: torch's foreach SGD with nesterov then modifies the gradients
        direction_sq = None if fold is None else self.direction_update(fold[0], fold[1], False, skip)
        if restore:
            self.restore()
        if not is_skipped(skip):
            self._base_update()
        return direction_sq

    def _base_update(self) -> None:
        if not self.base.fused:
            self.opt.base_optimizer.step()
            return
        for group, params in zip(self.opt.param_groups, self.group_params):
            if params:
                self.base.update.torch_update(params, [p.grad for p in params], [self.opt.state[p] for p in params],
                                              group, self.foreach)
