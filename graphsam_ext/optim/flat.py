"""FlatParams: an optimizer's parameters and gradients as views into one buffer per dtype.

Fused kernels then touch a few long contiguous buffers instead of many small tensors. Restoring
weights is always a copy into the buffer; ``p.data`` is never replaced by another tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from graphsam_ext import ops


FLAT_DTYPES = (torch.float32, torch.float64)  # what the native kernels take


@dataclass
class FlatBucket:
    """All parameters of one (device, dtype), laid out group by group.

    data, grad: (numel,) buffers; p.data / p.grad are views into them.
    offsets: (num_tensors + 1,) int64 on the device, tensor boundaries in the buffer.
    """

    params: list
    bounds: list  # python (start, end) per tensor
    data: Tensor
    grad: Tensor
    offsets: Tensor

    @property
    def numel(self) -> int:
        return self.data.numel()

    def new_buffer(self) -> Tensor:
        return torch.zeros_like(self.data)

    def views(self, buffer: Tensor) -> list:
        """Views of ``buffer`` shaped like each parameter."""
        return [buffer[a:b].view_as(p) for p, (a, b) in zip(self.params, self.bounds)]

    def sync(self) -> None:
        """Re-attach parameters and gradients that stopped being views of the buffers.

        A user may set grads to None (``zero_grad(set_to_none=True)``) so autograd allocates new
        ones, or assign ``p.data``; their values are copied in and the views restored, so the
        fused step always sees the current numbers. A parameter without a gradient counts as a
        zero gradient.
        """
        itemsize = self.data.element_size()
        data_ptr, grad_ptr = self.data.data_ptr(), self.grad.data_ptr()
        for p, (a, b) in zip(self.params, self.bounds):
            if p.data_ptr() != data_ptr + a * itemsize:
                self.data[a:b].copy_(p.data.reshape(-1))
                p.data = self.data[a:b].view_as(p)
            g = p.grad
            if g is None:
                self.grad[a:b].zero_()
                p.grad = self.grad[a:b].view_as(p)
            elif g.is_sparse:
                raise ValueError("params: sparse gradients are not supported; use dense embeddings "
                                 "(e.g. nn.Embedding(sparse=False))")
            elif g.data_ptr() != grad_ptr + a * itemsize or not g.is_contiguous():
                self.grad[a:b].copy_(g.reshape(-1))
                p.grad = self.grad[a:b].view_as(p)


class FlatParams:
    """Buckets of flat buffers, one per (device, dtype), in param-group order.

    param_groups: the optimizer's groups. All parameters must be on one device.
    """

    def __init__(self, param_groups: list):
        devices = {p.device for g in param_groups for p in g["params"]}
        if len(devices) > 1:
            raise ValueError(
                f"params: the fused implementation needs every parameter on one device, got {sorted(map(str, devices))}; "
                "use one optimizer per device or implementation='foreach'")
        dtypes = {p.dtype for g in param_groups for p in g["params"]} - set(FLAT_DTYPES)
        if dtypes:
            raise ValueError(
                f"params: the fused implementation takes float32 and float64 parameters, got {sorted(map(str, dtypes))}; "
                "use implementation='foreach', or keep float32 parameters and autocast the forward pass")
        order: dict = {}
        for group in param_groups:
            for p in group["params"]:
                order.setdefault(p.dtype, []).append(p)
        self.buckets: list[FlatBucket] = []
        for dtype, entries in order.items():
            total = sum(p.numel() for p in entries)
            device = entries[0].device
            data = torch.empty(total, dtype=dtype, device=device)
            grad = torch.zeros(total, dtype=dtype, device=device)
            bounds, start = [], 0
            for p in entries:
                end = start + p.numel()
                data[start:end].copy_(p.data.reshape(-1))
                if p.grad is not None:
                    grad[start:end].copy_(p.grad.reshape(-1))
                p.data = data[start:end].view_as(p)
                p.grad = grad[start:end].view_as(p)
                bounds.append((start, end))
                start = end
            offsets = torch.tensor([0] + [b for _, b in bounds], dtype=torch.int64, device=device)
            self.buckets.append(FlatBucket(entries, bounds, data, grad, offsets))

    @property
    def params(self) -> list:
        """Parameters in bucket order: the order of per-tensor results."""
        return [p for b in self.buckets for p in b.params]

    def sync(self) -> None:
        for bucket in self.buckets:
            bucket.sync()

    def zero_grad(self) -> None:
        for bucket in self.buckets:
            ops.zero_(bucket.grad)
