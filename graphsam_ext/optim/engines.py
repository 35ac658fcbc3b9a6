"""The three implementations of the SAM-family building blocks, with one interface.

- ``ReferenceEngine``: a loop over parameter tensors with the ops of ``ops.reference`` and
  torch's single-tensor Adam/SGD; readable, and the oracle of the parity tests.
- ``ForeachEngine``: the same math with ``torch._foreach_*`` ops and torch's foreach Adam/SGD.
- ``FusedEngine``: ``FlatParams`` buffers and the native kernels (``graphsam_ext.ops``); restore
  and base update are one pass, and nothing reads a device value back to the host.

Every engine keeps the optimizer's per-parameter state under the same keys (``exp_avg``,
``exp_avg_sq``, ``step`` / ``momentum_buffer``, ``step``; ``direction`` for GraphSAM), so
``state_dict()`` has one layout whatever the implementation. Per-tensor results (norms, scales)
are float64 tensors in the engine's own tensor order (``engine.params``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.optim.adam as torch_adam
import torch.optim.sgd as torch_sgd
from torch import Tensor

from graphsam_ext import ops
from graphsam_ext.ops import reference
from graphsam_ext.optim.flat import FlatParams


def _is_skipped(skip: Tensor | None) -> bool:
    """Host check of the skip flag (the per-tensor engines only; the fused kernels read it on device)."""
    return skip is not None and bool(skip)


class UpdateRange(NamedTuple):
    """Elements [start, end) of a flat bucket, tensors [first, end_tensor) of it, in one param group
    with one step count; offsets: the tensors' boundaries, relative to start."""

    group: int
    start: int
    end: int
    step: Tensor
    first: int
    end_tensor: int
    offsets: Tensor


def trainable_groups(param_groups: list) -> list:
    """The parameters of each group that require grad: the ones an engine optimizes."""
    return [[p for p in group["params"] if p.requires_grad] for group in param_groups]


def _base_state_keys(base_name: str) -> tuple:
    if base_name in ("adam", "adamw"):
        return ("exp_avg", "exp_avg_sq")
    if base_name == "sgd":
        return ("momentum_buffer",)
    return ()


class _ListEngine:
    """Per-tensor engines (reference loop or foreach)."""

    foreach = False

    def __init__(self, optimizer, track_direction: bool):
        self.opt = optimizer
        self.base = optimizer.base_spec
        self.group_params = trainable_groups(optimizer.param_groups)
        self.params = [p for ps in self.group_params for p in ps]
        self.track_direction = track_direction
        for p in self.params:
            self._init_state(optimizer.state[p], p)
        self.backup = [torch.empty_like(p) for p in self.params]
        self.perturbed = False  # between perturb() and the restore

    def _init_state(self, st: dict, p: Tensor) -> None:
        if self.base.fused:
            for key in _base_state_keys(self.base.name):
                st.setdefault(key, torch.zeros_like(p, memory_format=torch.preserve_format))
            st.setdefault("step", torch.tensor(0.0))
        if self.track_direction:
            st.setdefault("direction", torch.zeros_like(p))

    def adopt_loaded_state(self) -> None:
        """Called after load_state_dict: make sure every state entry exists with the right type."""
        for p in self.params:
            st = self.opt.state[p]
            if st.get("momentum_buffer", 0) is None:
                st["momentum_buffer"] = torch.zeros_like(p)
            self._init_state(st, p)

    # -- gradients -------------------------------------------------------------------------
    def release(self, params: list) -> None:
        """Parameters this engine no longer optimizes (frozen) drop their gradient, as torch's
        ``zero_grad()`` would, so that no base optimizer updates them with it."""
        for p in params:
            p.grad = None

    def prepare(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                raise ValueError("params: sparse gradients are not supported; use dense embeddings")

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()

    def _grads(self) -> list:
        return [p.grad for p in self.params]

    def _directions(self) -> list:
        return [self.opt.state[p]["direction"] for p in self.params]

    # -- norms -----------------------------------------------------------------------------
    def _sq(self, xs: list, weight_power: int, shift: float, per_tensor: bool) -> Tensor:
        if self.foreach:
            if weight_power:
                w = torch._foreach_abs(self.params)
                if weight_power == 2:
                    torch._foreach_mul_(w, w)
                xs = torch._foreach_mul(xs, w)
            if shift:
                xs = torch._foreach_add(xs, shift)
            norms = torch._foreach_norm(xs, 2, dtype=torch.float64)
            sq = torch.stack(norms) ** 2
        else:
            sq = torch.stack([
                reference.sum_squares(x.reshape(-1), p.reshape(-1), None, weight_power, shift)
                for x, p in zip(xs, self.params)
            ])
        return sq if per_tensor else sq.sum()

    def grad_sq(self, weight_power: int = 0, shift: float = 0.0, per_tensor: bool = False) -> Tensor:
        return self._sq(self._grads(), weight_power, shift, per_tensor)

    def direction_sq(self, weight_power: int = 0, per_tensor: bool = False) -> Tensor:
        return self._sq(self._directions(), weight_power, 0.0, per_tensor)

    # -- perturb / restore / direction -------------------------------------------------------
    def _scales(self, scale: Tensor, dtype_of: list) -> list:
        if scale.dim() == 0:
            return [scale.to(x.dtype) for x in dtype_of]
        return [s.to(x.dtype) for s, x in zip(scale.unbind(), dtype_of)]

    def perturb(self, source: str, scale: Tensor, adaptive: bool, skip: Tensor | None) -> None:
        src = self._grads() if source == "grad" else self._directions()
        self.perturbed = True
        if self.foreach:
            torch._foreach_copy_(self.backup, self.params)
            if _is_skipped(skip):
                return
            t = torch._foreach_mul(self.params, self.params) if adaptive else src
            if adaptive:
                torch._foreach_mul_(t, src)
            t = torch._foreach_mul(t, self._scales(scale, self.params))
            torch._foreach_add_(self.params, t)
            return
        for p, b, d, s in zip(self.params, self.backup, src, self._scales(scale, self.params)):
            reference.perturb_(p.data, b, d, s, None, adaptive, skip)

    def snapshot_direction(self) -> list:
        return [d.clone() for d in self._directions()]

    def revert_direction(self, skip: Tensor, saved: list) -> None:
        """Put back the saved direction where ``skip`` is true (device-side select, no sync)."""
        for d, old in zip(self._directions(), saved):
            d.copy_(torch.where(skip, old, d))

    def restore(self) -> None:
        self.perturbed = False
        if self.foreach:
            torch._foreach_copy_(self.params, self.backup)
        else:
            for p, b in zip(self.params, self.backup):
                p.data.copy_(b)

    def direction_update(self, inv_norm: Tensor, beta: float, init: bool, skip: Tensor | None) -> Tensor:
        ds, gs = self._directions(), self._grads()
        invs = self._scales(inv_norm, gs)
        if self.foreach:
            if not _is_skipped(skip):
                t = torch._foreach_mul(gs, invs)
                if init:
                    torch._foreach_copy_(ds, t)
                else:
                    torch._foreach_mul_(ds, beta)
                    torch._foreach_add_(ds, t, alpha=1.0 - beta)
            return (torch.stack(torch._foreach_norm(ds, 2, dtype=torch.float64)) ** 2).sum()
        total = torch.zeros((), dtype=torch.float64, device=ds[0].device)
        for d, g, inv in zip(ds, gs, invs):
            total = total + reference.direction_update_(d, g, inv, None, beta, init, skip)
        return total

    # -- base update ---------------------------------------------------------------------------
    def base_step(self, skip: Tensor | None, restore: bool, fold: tuple | None = None) -> Tensor | None:
        """Restore (optionally) and run the base update; returns ||d||^2 when folding a direction.

        fold: (inv_norm, beta): first fold the gradients into the GraphSAM direction EMA, as
        ``direction_update`` does (torch's foreach SGD with nesterov then modifies the gradients).
        """
        direction_sq = None if fold is None else self.direction_update(fold[0], fold[1], False, skip)
        if restore:
            self.restore()
        if not _is_skipped(skip):
            self._base_update()
        return direction_sq

    def _base_update(self) -> None:
        if not self.base.fused:
            self.opt.base_optimizer.step()
            return
        for group, params in zip(self.opt.param_groups, self.group_params):
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self.opt.state[p] for p in params]
            if self.base.name == "sgd":
                bufs = [st["momentum_buffer"] if float(st["step"]) > 0 else None for st in states]
                torch_sgd.sgd(params, grads, bufs, foreach=self.foreach, weight_decay=group["weight_decay"],
                              momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                              nesterov=group["nesterov"], maximize=False)
                for st, buf in zip(states, bufs):
                    if buf is not None:
                        st["momentum_buffer"] = buf
                    st["step"] += 1
            else:
                beta1, beta2 = group["betas"]
                torch_adam.adam(params, grads, [st["exp_avg"] for st in states],
                                [st["exp_avg_sq"] for st in states], [], [st["step"] for st in states],
                                foreach=self.foreach, decoupled_weight_decay=self.base.name == "adamw",
                                amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                                weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


class ReferenceEngine(_ListEngine):
    foreach = False


class ForeachEngine(_ListEngine):
    foreach = True


class FusedEngine:
    """Flat buffers and native kernels; see the module docstring."""

    def __init__(self, optimizer, track_direction: bool):
        self.opt = optimizer
        self.base = optimizer.base_spec
        self.flat = FlatParams([{"params": ps} for ps in trainable_groups(optimizer.param_groups)])
        self.params = self.flat.params
        self.perturbed = False  # between perturb() and the restore
        self.track_direction = track_direction
        self.keys = _base_state_keys(self.base.name) if self.base.fused else ()
        if track_direction:
            self.keys = self.keys + ("direction",)
        self.buffers = [{key: b.new_buffer() for key in self.keys} for b in self.flat.buckets]
        self.backups = [b.new_buffer() for b in self.flat.buckets]
        self._set_ranges(lambda p: 0.0)
        self._point_state()

    def _set_ranges(self, step_of) -> None:
        """The ranges the base-update kernels run over: per bucket, runs of consecutive tensors of
        one param group with one step count (``step_of(p)``), each with its step counter on the
        device. Tensors of a group differ in step count when some were frozen, added or loaded
        later; torch counts steps per tensor."""
        group_of = {id(p): gi for gi, g in enumerate(self.opt.param_groups) for p in g["params"]}
        self.ranges = []
        for b in self.flat.buckets:
            runs = []  # [group, step, first tensor, end tensor]
            for k, p in enumerate(b.params):
                key = [group_of[id(p)], step_of(p)]
                if runs and runs[-1][:2] == key:
                    runs[-1][3] = k + 1
                else:
                    runs.append(key + [k, k + 1])
            device = b.data.device
            self.ranges.append([UpdateRange(
                gi, b.bounds[k0][0], b.bounds[k1 - 1][1], torch.tensor(step, dtype=torch.float32, device=device),
                k0, k1, torch.tensor([b.bounds[k][0] - b.bounds[k0][0] for k in range(k0, k1)]
                                     + [b.bounds[k1 - 1][1] - b.bounds[k0][0]], dtype=torch.int64, device=device))
                for gi, step, k0, k1 in runs])

    def _point_state(self) -> None:
        for bucket, bufs, ranges in zip(self.flat.buckets, self.buffers, self.ranges):
            for key, buf in bufs.items():
                for p, view in zip(bucket.params, bucket.views(buf)):
                    self.opt.state[p][key] = view
            if self.base.fused:
                for r in ranges:
                    for p in bucket.params[r.first:r.end_tensor]:
                        self.opt.state[p]["step"] = r.step

    def adopt_loaded_state(self) -> None:
        """After load_state_dict: copy loaded per-parameter state into the flat buffers."""
        for bucket, bufs in zip(self.flat.buckets, self.buffers):
            for key, buf in bufs.items():
                for p, view in zip(bucket.params, bucket.views(buf)):
                    value = self.opt.state[p].get(key)
                    if value is None:
                        view.zero_()
                    else:
                        view.copy_(value)
        if self.base.fused:
            self._set_ranges(lambda p: float(self.opt.state[p].get("step", 0.0)))
        self._point_state()

    # -- gradients -------------------------------------------------------------------------
    def release(self, params: list) -> None:
        """As ``_ListEngine.release``; the parameters also get storage of their own, so they no
        longer keep this engine's flat buffers alive."""
        for p in params:
            p.data = p.data.clone()
            p.grad = None

    def prepare(self) -> None:
        self.flat.sync()

    def zero_grad(self) -> None:
        self.flat.zero_grad()

    # -- norms -----------------------------------------------------------------------------
    def _sq(self, sources: list, weight_power: int, shift: float, per_tensor: bool) -> Tensor:
        parts = [ops.sum_squares(x, b.data if weight_power else None, b.offsets if per_tensor else None,
                                 weight_power, shift)
                 for x, b in zip(sources, self.flat.buckets)]
        if per_tensor:
            return torch.cat(parts)
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum()

    def grad_sq(self, weight_power: int = 0, shift: float = 0.0, per_tensor: bool = False) -> Tensor:
        return self._sq([b.grad for b in self.flat.buckets], weight_power, shift, per_tensor)

    def direction_sq(self, weight_power: int = 0, per_tensor: bool = False) -> Tensor:
        return self._sq([bufs["direction"] for bufs in self.buffers], weight_power, 0.0, per_tensor)

    def _split(self, values: Tensor) -> list:
        """A 0-dim value for every bucket, or the slice of per-tensor values of each bucket."""
        if values.dim() == 0:
            return [values] * len(self.flat.buckets)
        return list(values.split([len(b.params) for b in self.flat.buckets]))

    # -- perturb / restore / direction -------------------------------------------------------
    def perturb(self, source: str, scale: Tensor, adaptive: bool, skip: Tensor | None) -> None:
        per_tensor = scale.dim() > 0
        self.perturbed = True
        for b, bufs, backup, s in zip(self.flat.buckets, self.buffers, self.backups, self._split(scale)):
            src = b.grad if source == "grad" else bufs["direction"]
            ops.perturb_(b.data, backup, src, s, b.offsets if per_tensor else None, adaptive, skip)

    def snapshot_direction(self) -> list:
        return [bufs["direction"].clone() for bufs in self.buffers]

    def revert_direction(self, skip: Tensor, saved: list) -> None:
        """Put back the saved direction where ``skip`` is true (device-side select, no sync)."""
        for bufs, old in zip(self.buffers, saved):
            bufs["direction"].copy_(torch.where(skip, old, bufs["direction"]))

    def restore(self) -> None:
        self.perturbed = False
        for b, backup in zip(self.flat.buckets, self.backups):
            ops.restore_(b.data, backup)

    def direction_update(self, inv_norm: Tensor, beta: float, init: bool, skip: Tensor | None) -> Tensor:
        per_tensor = inv_norm.dim() > 0
        parts = [ops.direction_update_(bufs["direction"], b.grad, inv, b.offsets if per_tensor else None,
                                       beta, init, skip)
                 for b, bufs, inv in zip(self.flat.buckets, self.buffers, self._split(inv_norm))]
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum()

    # -- base update ---------------------------------------------------------------------------
    def base_step(self, skip: Tensor | None, restore: bool, fold: tuple | None = None) -> Tensor | None:
        """As ``_ListEngine.base_step``; the fused base updates fold the direction into their own pass."""
        if not self.base.fused:
            direction_sq = None if fold is None else self.direction_update(fold[0], fold[1], False, skip)
            if restore:
                self.restore()
            if not _is_skipped(skip):
                self.opt.base_optimizer.step()
            return direction_sq
        self.perturbed = self.perturbed and not restore  # the restore is part of the update pass
        direction_sq, invs, per_tensor = None, [None] * len(self.flat.buckets), False
        if fold is not None:
            direction_sq = torch.zeros((), dtype=torch.float64, device=self.flat.buckets[0].data.device)
            invs, per_tensor = self._split(fold[0]), fold[0].dim() > 0
        for b, bufs, backup, ranges, inv in zip(self.flat.buckets, self.buffers, self.backups, self.ranges, invs):
            for gi, a, c, step, i0, i1, offsets in ranges:
                group = self.opt.param_groups[gi]
                step.add_(1.0 if skip is None else skip.logical_not().to(step.dtype))
                source = backup[a:c] if restore else None
                extra = {}
                if fold is not None:
                    extra = dict(direction=bufs["direction"][a:c], inv_norm=inv[i0:i1] if per_tensor else inv,
                                 offsets=offsets if per_tensor else None, beta=fold[1], direction_sq=direction_sq)
                if self.base.name == "sgd":
                    ops.sgd_step_(b.data[a:c], b.grad[a:c], bufs["momentum_buffer"][a:c], step, source, skip,
                                  lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                                  weight_decay=group["weight_decay"], nesterov=group["nesterov"], **extra)
                else:
                    beta1, beta2 = group["betas"]
                    ops.adam_step_(b.data[a:c], b.grad[a:c], bufs["exp_avg"][a:c], bufs["exp_avg_sq"][a:c], step,
                                   source, skip, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                   weight_decay=group["weight_decay"], decoupled=self.base.name == "adamw", **extra)
        return direction_sq


ENGINES = {"reference": ReferenceEngine, "foreach": ForeachEngine, "fused": FusedEngine}
