"""Fused sparse graph attention (PyG ``TransformerConv`` message passing) over a CSR graph.

The graph is given as CSR over DESTINATION nodes: the incoming edges of node ``i`` are
``rowptr[i]:rowptr[i + 1]`` and ``col[e]`` is the source node of edge ``e``. Build it from an
unsorted ``edge_index`` with :func:`build_csr`, which also returns the permutation to apply to
per-edge tensors.
"""
from __future__ import annotations

import torch
from torch import Tensor

from graphsam_ext import _backend
from graphsam_ext.ops import reference

_LIB = "graphsam_ext"
_NATIVE_DTYPES = {"cpu": (torch.float32, torch.float64, torch.bfloat16),
                  "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16)}


def graph_attention(q: Tensor, k: Tensor, v: Tensor, rowptr: Tensor, col: Tensor, edge: Tensor | None = None,
                    bias: Tensor | None = None, scale: float | None = None) -> Tensor:
    r"""Softmax attention of every node over its incoming edges.

    For destination node ``i`` and incoming edge ``e = (j -> i)``::

        score_e = scale * <q_i, k_j + edge_e> + bias_e
        alpha_e = exp(score_e) / sum_{e' into i} exp(score_e')
        out_i   = sum_{e into i} alpha_e * (v_j + edge_e)

    A node with no incoming edge gets zeros. A bias of ``-inf`` masks an edge.

    Args:
        q, k, v: ``(num_nodes, heads, dim)``, one floating dtype.
        rowptr: ``(num_nodes + 1,)`` int64 or int32, CSR offsets over destination nodes: starts
            at 0, non-decreasing, ends at ``num_edges``.
        col: ``(num_edges,)`` same dtype as ``rowptr``, the source node of each edge, in CSR order.
        edge: optional ``(num_edges, heads, dim)``, added to keys and values (PyG's projected
            edge features), in CSR order.
        bias: optional ``(num_edges, heads)``, added to the scores, in CSR order.
        scale: score scale; default ``dim ** -0.5``.

    Returns:
        ``(num_nodes, heads, dim)``, differentiable with respect to q, k, v, edge and bias.
    """
    _check_shapes(q, k, v, rowptr, col, edge, bias)
    if not _tracing():
        _check_csr_values(rowptr, col, q.shape[0])
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scale = float(scale)
    if _native_for(q.device.type, q.dtype):
        out, _ = torch.ops.graphsam_ext.graph_attention_forward(
            q.contiguous(), k.contiguous(), v.contiguous(), rowptr.contiguous(), col.contiguous(),
            None if edge is None else edge.contiguous(), None if bias is None else bias.contiguous(), scale)
        return out
    return reference.graph_attention(q, k, v, rowptr, col, edge, bias, scale)


def build_csr(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """CSR over destination nodes from an unsorted COO ``edge_index``.

    Args:
        edge_index: ``(2, num_edges)`` int64 or int32; row 0 holds sources, row 1 destinations.
        num_nodes: number of nodes; sizes come from here, never from ``edge_index.max()``, so
            trailing isolated nodes keep their rows.

    Returns:
        ``(rowptr, col, perm)``: ``rowptr (num_nodes + 1,)`` and ``col (num_edges,)`` in
        ``edge_index``'s dtype, and ``perm (num_edges,)`` int64 with ``col = edge_index[0, perm]``;
        index per-edge tensors with ``perm`` to put them in CSR order (``edge_attr[perm]``).
        Edges with the same destination keep their input order (stable sort).
    """
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise ValueError(f"build_csr: edge_index must be a (2, num_edges) tensor, got {shape}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"build_csr: edge_index must be int64 or int32, got {edge_index.dtype}")
    num_nodes = int(num_nodes)
    if num_nodes < 0:
        raise ValueError(f"build_csr: num_nodes must be >= 0, got {num_nodes}")
    src, dst = edge_index[0], edge_index[1]
    if not _tracing() and edge_index.device.type == "cpu" and edge_index.numel() > 0:
        lo, hi = torch.aminmax(edge_index)
        if int(lo) < 0 or int(hi) >= num_nodes:
            raise ValueError(f"build_csr: edge_index holds node {int(lo) if int(lo) < 0 else int(hi)}, outside "
                             f"[0, num_nodes={num_nodes}); pass the right num_nodes or fix the edges")
    dst_sorted, perm = torch.sort(dst, stable=True)
    col = src[perm]
    # searchsorted gives each row's first edge without a scatter, so it is deterministic on GPUs
    bounds = torch.arange(num_nodes + 1, device=dst.device, dtype=dst.dtype)
    rowptr = torch.searchsorted(dst_sorted, bounds, out_int32=edge_index.dtype == torch.int32)
    return rowptr, col, perm


@torch.compiler.assume_constant_result
def _native_for(device_type: str, dtype: torch.dtype) -> bool:
    """Kernel or fallback. Dynamo evaluates this once while tracing instead of tracing into
    ``_backend``, whose pybind11 call (``build_info``) it cannot trace."""
    return _backend.use_native(device_type) and dtype in _NATIVE_DTYPES.get(device_type, ())


def _tracing() -> bool:
    """True under torch.compile / torch.export, where tensor values cannot be read."""
    return torch.compiler.is_compiling()


def _check_shapes(q, k, v, rowptr, col, edge, bias) -> None:
    """Checks that read only metadata (safe while tracing, no host sync)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("rowptr", rowptr), ("col", col)):
        if not isinstance(t, Tensor):
            raise TypeError(f"graph_attention: {name} must be a tensor, got {type(t).__name__}")
    if q.dim() != 3:
        raise ValueError(f"graph_attention: q must be (num_nodes, heads, dim), got shape {tuple(q.shape)}; "
                         "reshape with q.view(num_nodes, heads, dim)")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"graph_attention: {name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    if not q.is_floating_point():
        raise TypeError(f"graph_attention: q must be a floating tensor, got {q.dtype}")
    for name, t in (("k", k), ("v", v), ("edge", edge), ("bias", bias)):
        if t is not None and t.dtype != q.dtype:
            raise TypeError(f"graph_attention: {name} has dtype {t.dtype} but q has {q.dtype}; cast it with "
                            f".to({q.dtype})")
    for name, t in (("k", k), ("v", v), ("rowptr", rowptr), ("col", col), ("edge", edge), ("bias", bias)):
        if t is not None and t.device != q.device:
            raise ValueError(f"graph_attention: {name} is on {t.device} but q is on {q.device}; move it with "
                             f".to({str(q.device)!r})")
    if rowptr.dim() != 1 or col.dim() != 1:
        raise ValueError(f"graph_attention: rowptr and col must be 1-D, got shapes {tuple(rowptr.shape)} and "
                         f"{tuple(col.shape)}")
    if rowptr.dtype not in (torch.int64, torch.int32) or col.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"graph_attention: rowptr and col must be int64 or int32, got {rowptr.dtype} and {col.dtype}")
    if rowptr.dtype != col.dtype:
        raise TypeError(f"graph_attention: rowptr is {rowptr.dtype} but col is {col.dtype}; use one index dtype "
                        "for both (e.g. col.to(rowptr.dtype))")
    num_nodes, heads, dim = q.shape
    if rowptr.shape[0] != num_nodes + 1:
        raise ValueError(f"graph_attention: rowptr must have num_nodes + 1 = {num_nodes + 1} entries (q has "
                         f"{num_nodes} nodes), got {rowptr.shape[0]}")
    num_edges = col.shape[0]
    if edge is not None and tuple(edge.shape) != (num_edges, heads, dim):
        raise ValueError(f"graph_attention: edge must be (num_edges, heads, dim) = ({num_edges}, {heads}, {dim}), "
                         f"got {tuple(edge.shape)}")
    if bias is not None and tuple(bias.shape) != (num_edges, heads):
        raise ValueError(f"graph_attention: bias must be (num_edges, heads) = ({num_edges}, {heads}), got "
                         f"{tuple(bias.shape)}")


def _check_csr_values(rowptr: Tensor, col: Tensor, num_nodes: int) -> None:
    """CSR value checks; on the CPU only, since on a GPU reading values back would sync the host."""
    if rowptr.device.type != "cpu":
        return
    num_edges = col.shape[0]
    first, last = int(rowptr[0]), int(rowptr[-1])
    if first != 0 or last != num_edges:
        raise ValueError(f"graph_attention: rowptr must start at 0 and end at num_edges = {num_edges}, got "
                         f"{first} .. {last}; build the CSR with graphsam_ext.ops.build_csr")
    if num_nodes > 0 and bool((rowptr[1:] < rowptr[:-1]).any()):
        raise ValueError("graph_attention: rowptr must be non-decreasing (edges sorted by destination); build the "
                         "CSR with graphsam_ext.ops.build_csr")
    if num_edges > 0:
        lo, hi = torch.aminmax(col)
        if int(lo) < 0 or int(hi) >= num_nodes:
            bad = int(lo) if int(lo) < 0 else int(hi)
            raise ValueError(f"graph_attention: col holds source node {bad}, outside [0, num_nodes={num_nodes})")


def _register() -> None:
    """Fake kernels (shapes for torch.compile / torch.export) and the autograd formula."""

    @torch.library.register_fake(f"{_LIB}::graph_attention_forward")
    def _(q, k, v, rowptr, col, edge, bias, scale):
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=lse_dtype)

    @torch.library.register_fake(f"{_LIB}::graph_attention_backward")
    def _(grad_out, grad_lse, q, k, v, rowptr, col, edge, bias, out, lse, scale):
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
                torch.empty_like(edge) if edge is not None else q.new_empty((0,)),
                torch.empty_like(bias) if bias is not None else q.new_empty((0,)))

    def setup_context(ctx, inputs, output):
        q, k, v, rowptr, col, edge, bias, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, rowptr, col, edge, bias, out, lse)
        ctx.scale = scale

    def backward(ctx, grad_out, grad_lse):
        q, k, v, rowptr, col, edge, bias, out, lse = ctx.saved_tensors
        dq, dk, dv, dedge, dbias = torch.ops.graphsam_ext.graph_attention_backward(
            grad_out.contiguous(), None if grad_lse is None else grad_lse.contiguous(), q, k, v, rowptr, col,
            edge, bias, out, lse, ctx.scale)
        return (dq, dk, dv, None, None, dedge if edge is not None else None,
                dbias if bias is not None else None, None)

    torch.library.register_autograd(f"{_LIB}::graph_attention_forward", backward, setup_context=setup_context)


if _backend.native_library() is not None:
    _register()
