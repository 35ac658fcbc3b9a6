"""Inverted dropout with a counter-based random mask.

``dropout(x, p)`` keeps each element independently with probability ``1 - p`` and scales the
kept ones by ``1 / (1 - p)``::

    out_i = x_i * (keep_i ? 1 / (1 - p) : 0),   keep_i = bits(seed, i) >= round(p * 2^32)

``bits(seed, i)`` is the high half of splitmix64 at counter ``i + 1`` of the stream ``seed``
(``csrc/dropout_math.h``; ``i`` is the row-major index of the element): a hash of
(seed, index), so the CPU kernel, the CUDA kernel and ``ops.reference.dropout`` give the same
mask for the same seed, and the keep probability is ``1 - round(p * 2^32) / 2^32``, within
2^-33 of ``1 - p``.

The mask is never stored: backward regenerates it from the seed, so the gradient is the same
op applied to the output gradient, ``dx = dropout(dout, p, seed)``. A stored mask would cost
one byte per element for as long as the activation lives (the model holds several per layer
until backward) and a second output to write in the forward; hashing one element is a few
integer multiplies, cheaper than reading that byte back on the CPU and the GPU alike.

The 64-bit seed of a call is drawn from torch's default CPU generator (:func:`draw_dropout_seed`),
so ``torch.manual_seed`` makes runs reproducible and a checkpoint that saves torch's RNG state
resumes with the same masks. The seed stays a CPU tensor even for CUDA inputs: the CUDA kernel
reads it on the host when it launches, which needs no device synchronization. (CUDA graphs would
capture that value and replay the same mask.)
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from graphsam_ext import _backend
from graphsam_ext.ops import reference

_LIB = "graphsam_ext"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_NATIVE_DTYPES = {"cpu": _DTYPES, "cuda": _DTYPES}
_INT64_MIN = -(1 << 63)


def draw_dropout_seed() -> Tensor:
    """A 0-dim int64 CPU tensor holding 64 random bits from torch's default CPU generator."""
    return torch.empty((), dtype=torch.int64).random_(_INT64_MIN, None)


def check_probability(p, owner: str = "dropout") -> float:
    """p as a float; raises ValueError unless it is a real number in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{owner}: p must be a float in [0, 1), got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{owner}: p must be in [0, 1), got {p}; p is the probability of dropping an element "
                         "(p = 1 would drop all of them: use torch.zeros_like instead)")
    return p


def _as_seed(seed) -> Tensor:
    if seed is None:
        return draw_dropout_seed()
    if isinstance(seed, Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device.type != "cpu":
            raise ValueError(f"dropout: seed must be a one-element int64 CPU tensor, got {seed.dtype} with "
                             f"{seed.numel()} elements on {seed.device}; draw one with draw_dropout_seed()")
        return seed.reshape(())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not _INT64_MIN <= int(seed) < 1 << 64:
        raise ValueError(f"dropout: seed must be an integer in [-2^63, 2^64) or an int64 tensor, got {seed!r}")
    value = int(seed)
    return torch.tensor(value - (1 << 64) if value >= 1 << 63 else value, dtype=torch.int64)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, seed: Tensor | int | None = None) -> Tensor:
    """Inverted dropout of ``x`` (any shape, floating dtype), differentiable with respect to x.

    Args:
        x: input; non-contiguous inputs are made contiguous (the mask follows row-major order).
        p: probability of dropping an element, in [0, 1).
        training: False returns x itself (eval mode), as does p = 0; neither draws a seed.
        seed: the stream of the mask: None draws one from torch's default CPU generator
            (:func:`draw_dropout_seed`); an int or a one-element int64 CPU tensor fixes it.

    Returns:
        A contiguous tensor of x's shape and dtype.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"dropout: x must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"dropout: x must be a floating tensor, got {x.dtype}; cast it with .float()")
    p = check_probability(p)
    if not training or p == 0.0:
        return x
    seed = _as_seed(seed)
    if _native_for(x.device.type, x.dtype):
        return torch.ops.graphsam_ext.dropout(x.contiguous(), p, seed)
    return reference.dropout(x.contiguous(), p, seed)


@torch.compiler.assume_constant_result
def _native_for(device_type: str, dtype: torch.dtype) -> bool:
    """Kernel or fallback, evaluated once by Dynamo instead of traced (see ops.graph_attention)."""
    return _backend.use_native(device_type) and dtype in _NATIVE_DTYPES.get(device_type, ())


def _register() -> None:
    """Fake kernel (shape for torch.compile / torch.export) and the autograd formula."""

    @torch.library.register_fake(f"{_LIB}::dropout")
    def _(x, p, seed):
        return x.new_empty(x.shape)

    def setup_context(ctx, inputs, output):
        _, p, seed = inputs
        ctx.p = p
        ctx.save_for_backward(seed)

    def backward(ctx, grad_out):
        (seed,) = ctx.saved_tensors
        return torch.ops.graphsam_ext.dropout(grad_out.contiguous(), ctx.p, seed), None, None

    torch.library.register_autograd(f"{_LIB}::dropout", backward, setup_context=setup_context)


if _backend.native_library() is not None:
    _register()
