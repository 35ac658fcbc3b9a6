"""``Dropout``: a drop-in for ``torch.nn.Dropout`` on :func:`graphsam_ext.ops.dropout`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from graphsam_ext import _backend
from graphsam_ext.ops.dropout import check_probability, dropout


class Dropout(nn.Module):
    r"""Inverted dropout: in training mode each element is kept with probability ``1 - p`` and
    scaled by ``1 / (1 - p)``; in eval mode (and for ``p = 0``) the input is returned as it is.

    The mask comes from a counter-based hash of (seed, element index), with the seed of each call
    drawn from torch's default CPU generator, so ``torch.manual_seed`` reproduces it on every
    device; see :mod:`graphsam_ext.ops.dropout`. The native kernels run where they are built, the
    pure-PyTorch reference (same masks) elsewhere. Unlike ``torch.nn.Dropout`` there is no
    ``inplace`` option, and ``p = 1`` is refused.

    Args:
        p: probability of dropping an element, in [0, 1).

    Shape: any; the output has the input's shape and dtype (float32, float64, bfloat16, float16).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_probability(p, "Dropout")

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ModelDropout(Dropout):
    r"""The dropout of the molecular graph transformer: :class:`Dropout`'s op where its native CPU
    kernel runs (on CPU training it is most of a step's dropout cost: forward and backward in
    about 0.4x the CPU time of ``torch.nn.Dropout``, ``benchmarks/bench_dropout.py``), and
    ``torch.nn.functional.dropout`` everywhere else: on CUDA, until the CUDA kernel has run on a
    GPU (``scripts/gpu_check.sh`` runs its tests), and without the native library, where the
    op's int64 reference would be slower than torch. Both are inverted dropout with keep
    probability 1 - p; only the masks' random streams differ.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and _native_cpu():
            return dropout(x, self.p, self.training)
        return nn.functional.dropout(x, self.p, self.training)


@torch.compiler.assume_constant_result
def _native_cpu() -> bool:
    """Whether the native CPU kernels load, evaluated once by Dynamo instead of traced."""
    return _backend.use_native("cpu")
