"""graphsam_ext.ops.graph_attention: kernels against the pure-PyTorch reference, autograd,
registration (opcheck, torch.compile, torch.export), input validation and build_csr."""
from __future__ import annotations

import pytest
import torch

from graphsam_ext import _backend
from graphsam_ext.ops import build_csr, graph_attention, reference

NATIVE = _backend.native_library() is not None
needs_native = pytest.mark.skipif(not NATIVE, reason="native library not built")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no visible CUDA device")),
]
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=2e-5, rtol=1e-4)}


def molecule_edges(num_molecules: int, gen: torch.Generator, min_atoms: int = 10, max_atoms: int = 40):
    """Random molecule-like graphs: a spanning tree plus a few ring closures, both directions,
    concatenated with node offsets and shuffled (unsorted COO). Returns (edge_index, num_nodes)."""
    parts, offset = [], 0
    for _ in range(num_molecules):
        n = int(torch.randint(min_atoms, max_atoms + 1, (1,), generator=gen))
        child = torch.arange(1, n)
        parent = (torch.rand(n - 1, generator=gen) * child).long()
        rings = torch.randint(0, n, (2, max(1, n // 8)), generator=gen)
        rings = rings[:, rings[0] != rings[1]]
        und = torch.cat([torch.stack([parent, child]), rings], 1)
        parts.append(torch.cat([und, und.flip(0)], 1) + offset)
        offset += n
    edge_index = torch.cat(parts, 1)
    return edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)], offset


def graph_case(name: str, gen: torch.Generator):
    """(edge_index, num_nodes) for the awkward sizes the kernels must handle."""
    if name == "no_edges":
        return torch.empty(2, 0, dtype=torch.long), 7
    if name == "one_node":
        return torch.zeros(2, 1, dtype=torch.long), 1
    if name == "one_node_no_edge":
        return torch.empty(2, 0, dtype=torch.long), 1
    if name == "isolated":  # nodes 12..29 have no incoming edge, trailing ones none at all
        return torch.randint(0, 12, (2, 40), generator=gen), 30
    if name == "self_loops":
        ei = torch.randint(0, 16, (2, 50), generator=gen)
        loops = torch.arange(16).repeat(2, 1)
        return torch.cat([ei, loops], 1), 16
    if name == "duplicates":
        ei = torch.randint(0, 9, (2, 12), generator=gen)
        return torch.cat([ei, ei, ei[:, :5]], 1), 9
    if name == "random":
        return torch.randint(0, 37, (2, 300), generator=gen), 37
    raise ValueError(name)


CASES = ["no_edges", "one_node", "one_node_no_edge", "isolated", "self_loops", "duplicates", "random"]


def make_inputs(edge_index, num_nodes, heads, dim, dtype, device, gen, with_edge=True, with_bias=True):
    rowptr, col, _ = build_csr(edge_index, num_nodes)
    num_edges = col.shape[0]

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    q, k, v = (rand(num_nodes, heads, dim) for _ in range(3))
    edge = rand(num_edges, heads, dim) if with_edge else None
    bias = rand(num_edges, heads) if with_bias else None
    return q, k, v, rowptr.to(device), col.to(device), edge, bias


def forward_and_grads(fn, q, k, v, rowptr, col, edge, bias, grad_seed=0):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, edge, bias)]
    out = fn(leaves[0], leaves[1], leaves[2], rowptr, col, leaves[3], leaves[4])
    gen = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    out.backward(grad_out)
    grads = [t.grad if t is not None else None for t in leaves]
    # a leaf without any path to the output (no edges at all) keeps grad None: that means zeros
    grads = [torch.zeros_like(t) if t is not None and g is None else g for t, g in zip(leaves, grads)]
    return out.detach(), grads


def assert_matches_reference(q, k, v, rowptr, col, edge, bias, tol):
    scale = q.shape[-1] ** -0.5

    def ref(*a):
        return reference.graph_attention(*a, scale)

    out, grads = forward_and_grads(graph_attention, q, k, v, rowptr, col, edge, bias)
    out_ref, grads_ref = forward_and_grads(ref, q, k, v, rowptr, col, edge, bias)
    torch.testing.assert_close(out, out_ref, **tol)
    for name, g, g_ref in zip(("q", "k", "v", "edge", "bias"), grads, grads_ref):
        if g_ref is None:
            assert g is None, name
            continue
        torch.testing.assert_close(g, g_ref, **tol, msg=lambda m, name=name: f"grad of {name}: {m}")


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_edge,with_bias", [(True, True), (False, False), (True, False), (False, True)])
def test_kernel_matches_reference(device, dtype, case, with_edge, with_bias):
    gen = torch.Generator().manual_seed(CASES.index(case) * 4 + 2 * with_edge + with_bias)
    edge_index, num_nodes = graph_case(case, gen)
    inputs = make_inputs(edge_index, num_nodes, 3, 7, dtype, device, gen, with_edge, with_bias)
    assert_matches_reference(*inputs, TOL[dtype])


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads,dim", [(1, 1), (8, 32), (4, 64), (2, 33), (1, 130)])
def test_kernel_head_and_dim_sizes(device, heads, dim):
    gen = torch.Generator().manual_seed(heads * 1000 + dim)
    edge_index, num_nodes = molecule_edges(6, gen)
    inputs = make_inputs(edge_index, num_nodes, heads, dim, torch.float32, device, gen)
    assert_matches_reference(*inputs, TOL[torch.float32])


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_thousand_molecules(device, dtype):
    gen = torch.Generator().manual_seed(1000)
    edge_index, num_nodes = molecule_edges(1000, gen)
    inputs = make_inputs(edge_index, num_nodes, 4, 16, dtype, device, gen)
    assert_matches_reference(*inputs, TOL[dtype])


@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_lse_matches_reference(device):
    gen = torch.Generator().manual_seed(5)
    edge_index, num_nodes = graph_case("isolated", gen)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index, num_nodes, 3, 7, torch.float64, device, gen)
    out, lse = torch.ops.graphsam_ext.graph_attention_forward(q, k, v, rowptr, col, edge, bias, 0.3)
    torch.testing.assert_close(lse, reference.graph_attention_lse(q, k, rowptr, col, edge, bias, 0.3))
    torch.testing.assert_close(out, reference.graph_attention(q, k, v, rowptr, col, edge, bias, 0.3))
    assert lse.dtype == torch.float64 and lse.shape == (num_nodes, 3)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_int32_indices(device):
    gen = torch.Generator().manual_seed(6)
    edge_index, num_nodes = molecule_edges(5, gen)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index, num_nodes, 2, 8, torch.float64, device, gen)
    out64 = graph_attention(q, k, v, rowptr, col, edge, bias)
    out32 = graph_attention(q, k, v, rowptr.int(), col.int(), edge, bias)
    torch.testing.assert_close(out32, out64, atol=0, rtol=0)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_masking_bias(device):
    """-inf bias removes an edge; a node whose every edge is masked outputs zeros, not NaN."""
    gen = torch.Generator().manual_seed(7)
    edge_index, num_nodes = graph_case("random", gen)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index, num_nodes, 2, 5, torch.float64, device, gen)
    bias[::3] = float("-inf")
    bias[rowptr[0]:rowptr[1]] = float("-inf")
    keep = torch.isfinite(bias[:, 0])
    out = graph_attention(q, k, v, rowptr, col, edge, bias)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all()
    # the same as dropping the masked edges (bias is per head; column 0 and 1 share the mask here)
    assert bool((torch.isfinite(bias[:, 1]) == keep).all())
    dst = reference.csr_destinations(rowptr, col.shape[0])
    kept_rowptr, kept_col, _ = build_csr(torch.stack([col[keep], dst[keep]]).cpu(), num_nodes)
    expect = graph_attention(q, k, v, kept_rowptr.to(device), kept_col.to(device), edge[keep], bias[keep])
    torch.testing.assert_close(out, expect)


def assert_close_low_precision(actual, expected, tol=2e-2):
    """Half / bfloat16 results: the error scales with the tensor's magnitude (8 or 11 bits of
    mantissa in the stored result), so compare against tol x its largest entry."""
    assert actual.dtype in (torch.bfloat16, torch.float16)
    bound = tol * expected.abs().max().item() + 1e-3
    err = (actual.float() - expected).abs().max().item()
    assert err <= bound, f"max error {err:.3g} above {bound:.3g}"


@needs_native
def test_bfloat16_cpu():
    gen = torch.Generator().manual_seed(8)
    edge_index, num_nodes = molecule_edges(20, gen)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index, num_nodes, 4, 16, torch.float32, "cpu", gen)
    low = [t.bfloat16() for t in (q, k, v, edge, bias)]
    out, grads = forward_and_grads(graph_attention, low[0], low[1], low[2], rowptr, col, low[3], low[4])
    # the oracle sees the same bfloat16-rounded inputs, in float32
    ref_in = [t.float() for t in low]
    out_ref, grads_ref = forward_and_grads(lambda *a: reference.graph_attention(*a, 0.25), ref_in[0], ref_in[1],
                                           ref_in[2], rowptr, col, ref_in[3], ref_in[4])
    assert out.dtype == torch.bfloat16
    assert_close_low_precision(out, out_ref)
    for g, g_ref in zip(grads, grads_ref):
        assert_close_low_precision(g, g_ref)


@pytest.mark.skipif(not (NATIVE and torch.cuda.is_available()), reason="needs the native library and a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision(dtype):
    gen = torch.Generator().manual_seed(9)
    edge_index, num_nodes = molecule_edges(200, gen)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index, num_nodes, 8, 32, torch.float32, "cuda", gen)
    low = [t.to(dtype) for t in (q, k, v, edge, bias)]
    out, grads = forward_and_grads(graph_attention, low[0], low[1], low[2], rowptr, col, low[3], low[4])
    ref_in = [t.float() for t in low]
    out_ref, grads_ref = forward_and_grads(lambda *a: reference.graph_attention(*a, 32 ** -0.5), ref_in[0],
                                           ref_in[1], ref_in[2], rowptr, col, ref_in[3], ref_in[4])
    assert out.dtype == dtype
    assert_close_low_precision(out, out_ref)
    for g, g_ref in zip(grads, grads_ref):
        assert_close_low_precision(g, g_ref)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_fallback_gives_same_numbers(device, monkeypatch):
    """The GRAPHSAM_EXT_NATIVE=0 path (the reference) and the kernel agree through the wrapper."""
    gen = torch.Generator().manual_seed(10)
    edge_index, num_nodes = molecule_edges(30, gen)
    inputs = make_inputs(edge_index, num_nodes, 3, 7, torch.float64, device, gen)
    native_out, native_grads = forward_and_grads(graph_attention, *inputs)
    monkeypatch.setattr(_backend, "use_native", lambda device: False)
    fallback_out, fallback_grads = forward_and_grads(graph_attention, *inputs)
    torch.testing.assert_close(native_out, fallback_out, **TOL[torch.float64])
    for g, g_ref in zip(native_grads, fallback_grads):
        torch.testing.assert_close(g, g_ref, **TOL[torch.float64])


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["isolated", "duplicates", "self_loops"])
def test_gradcheck(device, case):
    gen = torch.Generator().manual_seed(11)
    edge_index, num_nodes = graph_case(case, gen)
    keep = (edge_index < 8).all(0)  # small: gradcheck is O(inputs^2)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index[:, keep], 8, 2, 3, torch.float64, device, gen)
    leaves = [t.requires_grad_(True) for t in (q, k, v, edge, bias)]

    def fn(q, k, v, edge, bias):
        return graph_attention(q, k, v, rowptr, col, edge, bias, scale=0.7)

    assert torch.autograd.gradcheck(fn, leaves)

    def raw(q, k, v, edge, bias):  # both outputs, so the lse gradient path is checked too
        return torch.ops.graphsam_ext.graph_attention_forward(q, k, v, rowptr, col, edge, bias, 0.7)

    assert torch.autograd.gradcheck(raw, leaves)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("with_edge,with_bias", [(True, True), (False, False)])
def test_opcheck(device, index_dtype, with_edge, with_bias):
    gen = torch.Generator().manual_seed(12)
    edge_index, num_nodes = molecule_edges(3, gen, 4, 8)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index, num_nodes, 2, 5, torch.float64, device, gen,
                                                   with_edge, with_bias)
    rowptr, col = rowptr.to(index_dtype), col.to(index_dtype)
    for t in (q, k, v, edge, bias):
        if t is not None:
            t.requires_grad_(True)
    torch.library.opcheck(torch.ops.graphsam_ext.graph_attention_forward, (q, k, v, rowptr, col, edge, bias, 0.4))
    out, lse = torch.ops.graphsam_ext.graph_attention_forward(q, k, v, rowptr, col, edge, bias, 0.4)
    detached = [t.detach() if t is not None else None for t in (q, k, v, edge, bias)]
    torch.library.opcheck(torch.ops.graphsam_ext.graph_attention_backward,
                          (torch.randn_like(out), torch.randn_like(lse), detached[0], detached[1], detached[2],
                           rowptr, col, detached[3], detached[4], out.detach(), lse.detach(), 0.4))


class _Attend(torch.nn.Module):
    def forward(self, q, k, v, rowptr, col, edge):
        return graph_attention(q, k, v, rowptr, col, edge).relu().sum(-1)


@needs_native
def test_export_dynamic_nodes_and_edges():
    gen = torch.Generator().manual_seed(13)
    edge_index, num_nodes = molecule_edges(4, gen)
    example = make_inputs(edge_index, num_nodes, 2, 8, torch.float32, "cpu", gen, with_bias=False)[:6]
    nodes, edges = torch.export.Dim("nodes", min=2), torch.export.Dim("edges", min=2)
    shapes = ({0: nodes}, {0: nodes}, {0: nodes}, {0: nodes + 1}, {0: edges}, {0: edges})
    exported = torch.export.export(_Attend(), example, dynamic_shapes=shapes)
    assert "graph_attention_forward" in str(exported.graph)
    for molecules in (1, 9):
        edge_index, num_nodes = molecule_edges(molecules, gen)
        inputs = make_inputs(edge_index, num_nodes, 2, 8, torch.float32, "cpu", gen, with_bias=False)[:6]
        torch.testing.assert_close(exported.module()(*inputs), _Attend()(*inputs))


# ---- input validation ----------------------------------------------------------------------

def _valid(index_dtype=torch.int64):
    gen = torch.Generator().manual_seed(14)
    edge_index, num_nodes = graph_case("random", gen)
    q, k, v, rowptr, col, edge, bias = make_inputs(edge_index, num_nodes, 2, 4, torch.float32, "cpu", gen)
    return dict(q=q, k=k, v=v, rowptr=rowptr.to(index_dtype), col=col.to(index_dtype), edge=edge, bias=bias)


def _with(**changes):
    args = _valid()
    args.update({name: fn(args) for name, fn in changes.items()})
    return args


BAD_INPUTS = [
    (dict(q=lambda a: a["q"].flatten(1)), ValueError, "q must be \\(num_nodes, heads, dim\\)"),
    (dict(k=lambda a: a["k"][:, :1]), ValueError, "k must have q's shape"),
    (dict(v=lambda a: a["v"].double()), TypeError, "v has dtype torch.float64 but q has torch.float32"),
    (dict(edge=lambda a: a["edge"][:-1]), ValueError, "edge must be \\(num_edges, heads, dim\\)"),
    (dict(bias=lambda a: a["bias"][:, None]), ValueError, "bias must be \\(num_edges, heads\\)"),
    (dict(k=lambda a: a["k"].to("meta")), ValueError, "k is on meta but q is on cpu"),
    (dict(rowptr=lambda a: a["rowptr"][:-1]), ValueError, "rowptr must have num_nodes \\+ 1"),
    (dict(rowptr=lambda a: a["rowptr"].float()), TypeError, "rowptr and col must be int64 or int32"),
    (dict(col=lambda a: a["col"].int()), TypeError, "rowptr is torch.int64 but col is torch.int32"),
    (dict(col=lambda a: a["col"][None]), ValueError, "rowptr and col must be 1-D"),
    (dict(rowptr=lambda a: a["rowptr"] + 1), ValueError, "rowptr must start at 0 and end at num_edges"),
    (dict(rowptr=lambda a: torch.cat([a["rowptr"][:-1], a["rowptr"][-1:] - 1])), ValueError,
     "end at num_edges = 300"),
    (dict(rowptr=lambda a: a["rowptr"].index_put((torch.tensor([3]),), torch.tensor(299))), ValueError,
     "rowptr must be non-decreasing"),
    (dict(col=lambda a: a["col"].index_put((torch.tensor([5]),), torch.tensor(37))), ValueError,
     "col holds source node 37, outside \\[0, num_nodes=37\\)"),
    (dict(col=lambda a: a["col"].index_put((torch.tensor([5]),), torch.tensor(-1))), ValueError,
     "col holds source node -1"),
]


@pytest.mark.parametrize("changes,exc,message", BAD_INPUTS)
def test_bad_input_is_named(changes, exc, message):
    with pytest.raises(exc, match=message):
        graph_attention(**_with(**changes))


@needs_native
@pytest.mark.parametrize("changes,message", [
    (dict(rowptr=lambda a: a["rowptr"].index_put((torch.tensor([3]),), torch.tensor(299))),
     "rowptr must be non-decreasing"),
    (dict(col=lambda a: a["col"].index_put((torch.tensor([5]),), torch.tensor(37))), "col\\[5\\] = 37"),
    (dict(q=lambda a: a["q"].transpose(0, 1).contiguous().transpose(0, 1)), "must be contiguous"),
])
def test_native_op_checks_its_arguments(changes, message):
    """Called directly (skipping the wrapper), the CPU kernel still refuses to read out of bounds."""
    a = _with(**changes)
    with pytest.raises(ValueError, match=message):
        torch.ops.graphsam_ext.graph_attention_forward(a["q"], a["k"], a["v"], a["rowptr"], a["col"], a["edge"],
                                                       a["bias"], 0.5)


# ---- build_csr -------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_build_csr(device, index_dtype):
    gen = torch.Generator().manual_seed(15)
    edge_index = torch.randint(0, 20, (2, 80), generator=gen).to(device=device, dtype=index_dtype)
    rowptr, col, perm = build_csr(edge_index, 25)  # nodes 20..24 exist but have no edges
    assert rowptr.shape == (26,) and rowptr.dtype == col.dtype == index_dtype and perm.dtype == torch.int64
    assert int(rowptr[0]) == 0 and int(rowptr[-1]) == 80 and bool((rowptr[20:] == 80).all())
    torch.testing.assert_close(col, edge_index[0, perm])
    dst = edge_index[1, perm]
    for i in range(25):
        seg = dst[int(rowptr[i]):int(rowptr[i + 1])]
        assert bool((seg == i).all())
        order = perm[int(rowptr[i]):int(rowptr[i + 1])]
        assert bool((order[1:] > order[:-1]).all()), "edges of one destination keep their input order"


def test_build_csr_errors():
    with pytest.raises(ValueError, match="edge_index must be a \\(2, num_edges\\) tensor"):
        build_csr(torch.zeros(3, 4, dtype=torch.long), 5)
    with pytest.raises(TypeError, match="edge_index must be int64 or int32"):
        build_csr(torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match="edge_index holds node 5, outside \\[0, num_nodes=5\\)"):
        build_csr(torch.tensor([[0, 5], [1, 2]]), 5)
    rowptr, col, perm = build_csr(torch.empty(2, 0, dtype=torch.long), 3)
    assert rowptr.tolist() == [0, 0, 0, 0] and col.numel() == 0 and perm.numel() == 0
