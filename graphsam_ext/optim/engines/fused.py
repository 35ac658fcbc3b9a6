"""The fused engine: ``FlatParams`` buffers and the native kernels (``graphsam_ext.ops``).

Every parameter and gradient of a (device, dtype) lives in one contiguous buffer (``p.data``,
``p.grad`` are views), and so does each state buffer; the SAM ops run over whole buffers,
restore and base update are one pass, and nothing reads a device value back to the host.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from graphsam_ext import ops
from graphsam_ext.optim.engines.interface import GRAD, Engine, is_skipped, trainable_groups, zeros64
from graphsam_ext.optim.flat import FlatParams


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


class FusedEngine(Engine):
    def __init__(self, optimizer, buffers: tuple):
        self.opt = optimizer
        self.base = optimizer.base_spec
        self.flat = FlatParams([{"params": ps} for ps in trainable_groups(optimizer.param_groups)])
        self.params = self.flat.params
        self.perturbed = False
        self._scaled = False  # the gradients are still those of the scaled loss (see grad_scale)
        self.keys = self.base.state_keys + tuple(buffers)
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
        """The parameters also get storage of their own, so they no longer keep this engine's
        flat buffers alive."""
        for p in params:
            p.data = p.data.clone()
            p.grad = None

    def prepare(self) -> None:
        self.flat.sync()

    def unscale(self) -> None:
        """Done by the next gradient norm, in its pass (or by the first other read, ``_flat``)."""
        self._scaled = True

    def zero_grad(self) -> None:
        self.flat.zero_grad()
        self._scaled = False

    def _flat(self, source: str) -> list:
        """The flat buffer of ``source`` in each bucket (gradients unscaled first when scaled)."""
        if source == GRAD:
            if self._scaled:
                self.sum_squares()
            return [b.grad for b in self.flat.buckets]
        return [bufs[source] for bufs in self.buffers]

    def _split(self, values: Tensor) -> list:
        """A 0-dim value for every bucket, or the slice of per-tensor values of each bucket."""
        if values.dim() == 0:
            return [values] * len(self.flat.buckets)
        return list(values.split([len(b.params) for b in self.flat.buckets]))

    @staticmethod
    def _total(parts: list) -> Tensor:
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum()

    # -- reductions ------------------------------------------------------------------------
    def sum_squares(self, source=GRAD, weight_power=0, shift=0.0, per_tensor=False) -> Tensor:
        """The first sum over scaled gradients also unscales them, in the same pass, and sets found_inf."""
        unscale = source == GRAD and self._scaled
        self._scaled = False
        xs = [b.grad for b in self.flat.buckets] if unscale else self._flat(source)
        parts = []
        for x, b in zip(xs, self.flat.buckets):
            args = (b.data if weight_power else None, b.offsets if per_tensor else None, weight_power, shift)
            parts.append(ops.unscale_sum_squares_(x, self.grad_scale, self.found_inf, *args) if unscale
                         else ops.sum_squares(x, *args))
        return torch.cat(parts) if per_tensor else self._total(parts)

    def dot(self, a: str, b: str) -> Tensor:
        return self._total([torch.dot(x.double(), y.double()) for x, y in zip(self._flat(a), self._flat(b))])

    # -- element-wise updates --------------------------------------------------------------
    def combine(self, target: str, terms: list, wide: bool = False) -> None:
        for k, (dst, b) in enumerate(zip(self._flat(target), self.flat.buckets)):
            dtype = torch.float64 if wide else dst.dtype
            value = None
            for t in terms:
                scale = self._expand(self._split(t.scale)[k], b).to(dtype)
                term = self._flat(t.source)[k].to(dtype) * scale
                value = term if value is None else value.add_(term)
            dst.copy_(value)

    @staticmethod
    def _expand(scale: Tensor, bucket) -> Tensor:
        if scale.dim() == 0:
            return scale
        lengths = bucket.offsets[1:] - bucket.offsets[:-1]
        return torch.repeat_interleave(scale, lengths, output_size=bucket.numel)

    def snapshot(self, source: str) -> list:
        return [x.clone() for x in self._flat(source)]

    def revert(self, source: str, skip: Tensor, saved: list) -> None:
        for x, old in zip(self._flat(source), saved):
            x.copy_(torch.where(skip, old, x))

    # -- perturbation ----------------------------------------------------------------------
    def perturb(self, source, scale, adaptive, skip) -> None:
        per_tensor = scale.dim() > 0
        self.perturbed = True
        for b, src, backup, s in zip(self.flat.buckets, self._flat(source), self.backups, self._split(scale)):
            ops.perturb_(b.data, backup, src, s, b.offsets if per_tensor else None, adaptive, skip)

    def restore(self) -> None:
        self.perturbed = False
        for b, backup in zip(self.flat.buckets, self.backups):
            ops.restore_(b.data, backup)

    def direction_update(self, inv_norm, beta, init, skip) -> Tensor:
        per_tensor = inv_norm.dim() > 0
        return self._total([
            ops.direction_update_(d, g, inv, b.offsets if per_tensor else None, beta, init, skip)
            for b, g, d, inv in zip(self.flat.buckets, self._flat(GRAD), self._flat("direction"),
                                    self._split(inv_norm))])

    # -- base update -----------------------------------------------------------------------
    def base_step(self, skip, restore, fold=None):
        """The fused base updates fold the direction into their own pass."""
        grads = self._flat(GRAD)
        if not self.base.fused:
            direction_sq = None if fold is None else self.direction_update(fold[0], fold[1], False, skip)
            if restore:
                self.restore()
            if not is_skipped(skip):
                self.opt.base_optimizer.step()
            return direction_sq
        self.perturbed = self.perturbed and not restore  # the restore is part of the update pass
        direction_sq, invs, per_tensor = None, [None] * len(self.flat.buckets), False
        if fold is not None:
            direction_sq = zeros64(self.flat.buckets[0].data.device)
            invs, per_tensor = self._split(fold[0]), fold[0].dim() > 0
        update = self.base.update.fused_update
        for b, g, bufs, backup, ranges, inv in zip(self.flat.buckets, grads, self.buffers, self.backups, self.ranges,
                                                   invs):
            for gi, a, c, step, i0, i1, offsets in ranges:
                step.add_(1.0 if skip is None else skip.logical_not().to(step.dtype))
                extra = {}
                if fold is not None:
                    extra = dict(direction=bufs["direction"][a:c], inv_norm=inv[i0:i1] if per_tensor else inv,
                                 offsets=offsets if per_tensor else None, beta=fold[1], direction_sq=direction_sq)
                update(b.data[a:c], g[a:c], {key: buf[a:c] for key, buf in bufs.items()}, step,
                       backup[a:c] if restore else None, skip, self.opt.param_groups[gi], extra)
        return direction_sq
