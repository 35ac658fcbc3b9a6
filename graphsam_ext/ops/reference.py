"""Pure-PyTorch versions of every native op: the fallback and the test oracle.

They share the semantics documented in ``graphsam_ext.ops.sam`` and are written for clarity.
The scalar math follows the same expressions as ``csrc/sam_math.h``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _per_element(values: Tensor, offsets: Tensor | None, numel: int) -> Tensor:
    """Expand a 0-dim value or one value per segment to a value per element."""
    if offsets is None:
        return values.reshape(())
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(values, lengths, output_size=numel)


def _skipped(skip: Tensor | None) -> bool:
    return skip is not None and bool(skip)


def sum_squares(x: Tensor, weight: Tensor | None = None, offsets: Tensor | None = None,
                weight_power: int = 0, shift: float = 0.0) -> Tensor:
    a = x.double()
    if weight_power:
        a = a * weight.double().abs() ** weight_power
    sq = (a + shift) ** 2
    if offsets is None:
        return sq.sum()
    seg = torch.repeat_interleave(torch.arange(offsets.numel() - 1, device=x.device),
                                  offsets[1:] - offsets[:-1], output_size=x.numel())
    return torch.zeros(offsets.numel() - 1, dtype=torch.float64, device=x.device).index_add_(0, seg, sq)


def unscale_sum_squares_(x: Tensor, grad_scale: Tensor, found_inf: Tensor, weight: Tensor | None,
                         offsets: Tensor | None, weight_power: int, shift: float) -> Tensor:
    x.mul_((1.0 / grad_scale.reshape(()).double()).to(x.dtype))
    sq = sum_squares(x, weight, offsets, weight_power, shift)
    found_inf.copy_(torch.where(torch.isfinite(sq).all(), found_inf, torch.ones_like(found_inf)))
    return sq


def perturb_(param: Tensor, backup: Tensor, direction: Tensor, scale: Tensor, offsets: Tensor | None,
             adaptive: bool, skip: Tensor | None) -> None:
    backup.copy_(param)
    if _skipped(skip):
        return
    s = _per_element(scale, offsets, param.numel()).to(param.dtype)
    step = param * param * direction if adaptive else direction
    param.copy_(param + s * step)


def direction_update_(direction: Tensor, grad: Tensor, inv_norm: Tensor, offsets: Tensor | None, beta: float,
                      init: bool, skip: Tensor | None) -> Tensor:
    if not _skipped(skip):
        inv = _per_element(inv_norm, offsets, grad.numel()).to(grad.dtype)
        if init:
            direction.copy_(grad * inv)
        else:
            direction.copy_(beta * direction + (1.0 - beta) * (grad * inv))
    return sum_squares(direction)


def _fold_direction(direction: Tensor | None, grad: Tensor, inv_norm: Tensor | None, offsets: Tensor | None,
                    beta: float, direction_sq: Tensor | None, skip: Tensor | None) -> None:
    """The optional direction EMA of a base update, from the raw gradient; adds ||d||^2 to direction_sq."""
    if direction is not None:
        direction_sq.add_(direction_update_(direction, grad, inv_norm, offsets, beta, False, skip))


def adam_step_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor,
               source: Tensor | None, skip: Tensor | None, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, decoupled: bool, direction: Tensor | None = None,
               inv_norm: Tensor | None = None, offsets: Tensor | None = None, beta: float = 0.0,
               direction_sq: Tensor | None = None) -> None:
    _fold_direction(direction, grad, inv_norm, offsets, beta, direction_sq, skip)
    if source is not None:
        param.copy_(source)
    if _skipped(skip):
        return
    t = float(step)
    if weight_decay != 0:
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1 ** t)
    bc2_sqrt = math.sqrt(1 - beta2 ** t)
    denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def sgd_step_(param: Tensor, grad: Tensor, momentum_buffer: Tensor, step: Tensor, source: Tensor | None,
              skip: Tensor | None, lr: float, momentum: float, dampening: float, weight_decay: float,
              nesterov: bool, direction: Tensor | None = None, inv_norm: Tensor | None = None,
              offsets: Tensor | None = None, beta: float = 0.0, direction_sq: Tensor | None = None) -> None:
    _fold_direction(direction, grad, inv_norm, offsets, beta, direction_sq, skip)
    if source is not None:
        param.copy_(source)
    if _skipped(skip):
        return
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    if momentum != 0:
        if float(step) <= 1:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    param.add_(grad, alpha=-lr)


# ---------------------------------------------------------------------------------------------
# Sparse graph attention (semantics documented in graphsam_ext.ops.graph_attention)
# ---------------------------------------------------------------------------------------------


def csr_destinations(rowptr: Tensor, num_edges: int) -> Tensor:
    """The destination node of every edge of a CSR graph, (num_edges,) int64."""
    counts = (rowptr[1:] - rowptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=rowptr.device), counts,
                                   output_size=num_edges)


def segment_softmax(scores: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    """Softmax of (num_edges, heads) scores over the edges that share a destination node."""
    heads = scores.shape[1]
    index = dst.view(-1, 1).expand_as(scores)
    row_max = scores.new_full((num_nodes, heads), float("-inf")).scatter_reduce(
        0, index, scores, reduce="amax", include_self=True)
    # a row whose every score is -inf keeps -inf as its max; shift by 0 there instead of NaN
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max.index_select(0, dst))
    denom = scores.new_zeros((num_nodes, heads)).index_add(0, dst, weights)
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return weights / denom.index_select(0, dst)


def graph_attention(q: Tensor, k: Tensor, v: Tensor, rowptr: Tensor, col: Tensor, edge: Tensor | None,
                    bias: Tensor | None, scale: float) -> Tensor:
    """Gather + segment softmax + index_add: materializes (num_edges, heads, dim) tensors."""
    num_nodes, num_edges = q.shape[0], col.shape[0]
    dst = csr_destinations(rowptr, num_edges)
    src = col.long()
    keys = k.index_select(0, src)
    values = v.index_select(0, src)
    if edge is not None:
        keys = keys + edge
        values = values + edge
    scores = (q.index_select(0, dst) * keys).sum(-1) * scale
    if bias is not None:
        scores = scores + bias
    alpha = segment_softmax(scores, dst, num_nodes)
    return torch.zeros_like(q).index_add(0, dst, values * alpha.unsqueeze(-1))


def graph_attention_lse(q: Tensor, k: Tensor, rowptr: Tensor, col: Tensor, edge: Tensor | None,
                        bias: Tensor | None, scale: float) -> Tensor:
    """log sum_e exp(score_e) per (node, head), 0 for nodes without incoming edges (as the kernels)."""
    num_nodes, num_edges = q.shape[0], col.shape[0]
    dst = csr_destinations(rowptr, num_edges)
    keys = k.index_select(0, col.long())
    if edge is not None:
        keys = keys + edge
    scores = (q.index_select(0, dst) * keys).sum(-1) * scale
    if bias is not None:
        scores = scores + bias
    lse = torch.full((num_nodes, q.shape[1]), float("-inf"), dtype=scores.dtype, device=q.device)
    lse = lse.scatter_reduce(0, dst.view(-1, 1).expand_as(scores), scores, reduce="amax", include_self=True)
    shift = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    total = torch.zeros_like(lse).index_add(0, dst, torch.exp(scores - shift.index_select(0, dst)))
    return torch.where(total > 0, shift + torch.log(total), torch.zeros_like(total))


# ---- dropout ----------------------------------------------------------------------------------
# csrc/dropout_math.h with int64 tensor ops: int64 multiplication and addition wrap like uint64
# (same bits), and a logical right shift is an arithmetic one with the sign-extended bits masked.

def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_DROPOUT_GAMMA = _signed64(0x9E3779B97F4A7C15)
_DROPOUT_MIX1 = _signed64(0xBF58476D1CE4E5B9)
_DROPOUT_MIX2 = _signed64(0x94D049BB133111EB)


def _shift_right_logical(z: Tensor, bits: int) -> Tensor:
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def dropout_bits(seed: Tensor, numel: int, device: torch.device | str) -> Tensor:
    """(numel,) int64 in [0, 2^32): the high 32 bits of splitmix64 at counters 1..numel of the
    stream ``seed`` (a one-element int64 tensor), the random bits of each element."""
    z = torch.arange(1, numel + 1, dtype=torch.int64, device=device) * _DROPOUT_GAMMA + seed.reshape(())
    z = (z ^ _shift_right_logical(z, 30)) * _DROPOUT_MIX1
    z = (z ^ _shift_right_logical(z, 27)) * _DROPOUT_MIX2
    z = z ^ _shift_right_logical(z, 31)
    return _shift_right_logical(z, 32)


def dropout_threshold(p: float) -> int:
    """round(p * 2^32): an element is dropped when its 32 bits are below it (exact in double)."""
    return math.floor(p * 4294967296.0 + 0.5)


def dropout_keep(seed: Tensor, numel: int, p: float, device: torch.device | str) -> Tensor:
    """(numel,) bool, True for the kept elements of a ``dropout(x, p, seed)`` with x.numel() == numel."""
    return dropout_bits(seed, numel, device) >= dropout_threshold(p)


def dropout(x: Tensor, p: float, seed: Tensor) -> Tensor:
    """x * (keep ? 1 / (1 - p) : 0) computed in float32 (float64 for float64 x), rounded to x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = dropout_keep(seed, x.numel(), p, x.device).view(x.shape)
    factor = keep.to(acc) * (1.0 / (1.0 - p))
    return (x.to(acc) * factor).to(x.dtype)
