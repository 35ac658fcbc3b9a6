"""graphsam_ext.nn: GraphAttention against PyG's TransformerConv, GraphTransformerLayer, and
torch.compile of a model built from them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from graphsam_ext import _backend
from graphsam_ext.nn import GraphAttention, GraphTransformerLayer
from graphsam_ext.ops import build_csr, reference

pyg_nn = pytest.importorskip("torch_geometric.nn")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no visible CUDA device")),
]


def molecular_batch(num_molecules: int, gen: torch.Generator, atom_dim: int = 16, bond_dim: int = 6):
    """(x, edge_index, edge_attr): random trees with a few ring bonds, both directions, shuffled."""
    parts, offset = [], 0
    for _ in range(num_molecules):
        n = int(torch.randint(3, 30, (1,), generator=gen))
        child = torch.arange(1, n)
        parent = (torch.rand(n - 1, generator=gen) * child).long()
        und = torch.stack([parent, child])
        parts.append(torch.cat([und, und.flip(0)], 1) + offset)
        offset += n
    edge_index = torch.cat(parts, 1)
    edge_index = edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)]
    x = torch.randn(offset, atom_dim, generator=gen)
    edge_attr = torch.randn(edge_index.shape[1], bond_dim, generator=gen)
    return x, edge_index, edge_attr


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("edge_dim,root_weight,bias", [(6, True, True), (None, True, True), (6, False, True),
                                                       (6, True, False)])
def test_matches_pyg_transformer_conv(device, edge_dim, root_weight, bias):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv = pyg_nn.TransformerConv(16, 8, heads=4, concat=True, beta=False, edge_dim=edge_dim, bias=bias,
                                  root_weight=root_weight).to(device)
    layer = GraphAttention(16, 8, heads=4, edge_dim=edge_dim, root_weight=root_weight, bias=bias).to(device)
    layer.load_state_dict(conv.state_dict())
    x, edge_index, edge_attr = (t.to(device) for t in molecular_batch(32, gen))
    edge_attr = edge_attr if edge_dim is not None else None

    def run(module):
        xs = x.clone().requires_grad_(True)
        es = edge_attr.clone().requires_grad_(True) if edge_attr is not None else None
        out = module(xs, edge_index, es)
        out.backward(torch.linspace(-1, 1, out.numel(), device=device).view_as(out))
        return out.detach(), xs.grad, None if es is None else es.grad, {n: p.grad for n, p in module.named_parameters()}

    out, gx, ge, gp = run(layer)
    out_pyg, gx_pyg, ge_pyg, gp_pyg = run(conv)
    torch.testing.assert_close(out, out_pyg, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_pyg, atol=1e-5, rtol=1e-5)
    if ge is not None:
        torch.testing.assert_close(ge, ge_pyg, atol=1e-5, rtol=1e-5)
    assert gp.keys() <= gp_pyg.keys()
    for name, g in gp.items():
        torch.testing.assert_close(g, gp_pyg[name], atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.skipif(not (torch.cuda.is_available() and _backend.use_native("cuda")),
                    reason="needs a CUDA device and the native CUDA kernels")
def test_bfloat16_cuda_close_to_pyg_float32():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    conv = pyg_nn.TransformerConv(16, 32, heads=8, edge_dim=6).cuda()
    layer = GraphAttention(16, 32, heads=8, edge_dim=6).cuda()
    layer.load_state_dict(conv.state_dict())
    x, edge_index, edge_attr = (t.cuda() for t in molecular_batch(128, gen))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x, edge_index, edge_attr)
    torch.testing.assert_close(out.float(), conv(x, edge_index, edge_attr), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_prebuilt_csr_skips_the_sort_and_matches(device):
    gen = torch.Generator().manual_seed(2)
    layer = GraphAttention(16, 5, heads=3, edge_dim=6).to(device)
    x, edge_index, edge_attr = (t.to(device) for t in molecular_batch(10, gen))
    rowptr, col, perm = build_csr(edge_index, x.shape[0])
    expect = layer(x, edge_index, edge_attr)
    torch.testing.assert_close(layer(x, edge_index, edge_attr, csr=(rowptr, col, perm)), expect)
    torch.testing.assert_close(layer(x, edge_index, edge_attr[perm], csr=(rowptr, col, None)), expect)
    torch.testing.assert_close(layer.forward_csr(x, rowptr, col, edge_attr[perm]), expect)


def test_layer_errors():
    layer = GraphAttention(16, 5, heads=3, edge_dim=6)
    x, edge_index, edge_attr = molecular_batch(3, torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="edge_attr \\(num_edges, 6\\) is required"):
        layer(x, edge_index)
    with pytest.raises(ValueError, match="built with edge_dim=None"):
        GraphAttention(16, 5)(x, edge_index, edge_attr)
    with pytest.raises(ValueError, match="x must be \\(num_nodes, 16\\)"):
        layer(x[:, :8], edge_index, edge_attr)
    with pytest.raises(ValueError, match="heads must be a positive integer"):
        GraphAttention(16, 5, heads=0)
    with pytest.raises(ValueError, match="hidden \\(30\\) must be a positive multiple of heads \\(4\\)"):
        GraphTransformerLayer(30, 4)


def _manual_layer(layer: GraphTransformerLayer, x, rowptr, col, edge_attr, bias):
    """GraphTransformerLayer's equations written out with the reference op (eval mode)."""
    a = layer.attn
    h0 = layer.norm_attn(x)
    n, heads, c = x.shape[0], a.heads, a.out_channels
    q, k, v = (lin(h0).view(n, heads, c) for lin in (a.lin_query, a.lin_key, a.lin_value))
    edge = a.lin_edge(edge_attr).view(-1, heads, c)
    att = reference.graph_attention(q, k, v, rowptr, col, edge, bias, c ** -0.5).reshape(n, heads * c)
    h = x + layer.attn_out(att)
    return h + layer.ffn(layer.norm_ffn(h))


@pytest.mark.parametrize("device", DEVICES)
def test_transformer_layer_equations_and_grads(device):
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    layer = GraphTransformerLayer(32, 4, edge_dim=6, dropout=0.1, ffn_multiplier=2).to(device).eval()
    _, edge_index, edge_attr = molecular_batch(16, gen)
    rowptr, col, perm = (t.to(device) for t in build_csr(edge_index, int(edge_index.max()) + 1))
    x = torch.randn(rowptr.numel() - 1, 32, generator=gen).to(device)
    edge_attr = edge_attr.to(device)[perm]
    bias = torch.randn(col.numel(), 4, generator=gen).to(device)
    out = layer(x, rowptr, col, edge_attr, bias)
    torch.testing.assert_close(out, _manual_layer(layer, x, rowptr, col, edge_attr, bias), atol=1e-5, rtol=1e-5)
    layer.train()
    layer(x, rowptr, col, edge_attr, bias).square().mean().backward()
    for name, p in layer.named_parameters():
        if name == "attn.lin_key.bias":  # adds <q_i, b> to every score of row i: softmax ignores it
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.layers = nn.ModuleList(GraphTransformerLayer(32, 4, edge_dim=6, dropout=0.0) for _ in range(2))
        self.head = nn.Linear(32, 1)

    def forward(self, x, rowptr, col, edge_attr):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h, rowptr, col, edge_attr)
        return self.head(h).sum()


@pytest.mark.skipif(not _backend.use_native("cpu"), reason="native library not built")
def test_torch_compile_fullgraph_matches_eager():
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = _TinyModel()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for molecules in (8, 13):  # a second size reuses the dynamic graph
        x, edge_index, edge_attr = molecular_batch(molecules, gen)
        rowptr, col, perm = build_csr(edge_index, x.shape[0])
        args = (x, rowptr, col, edge_attr[perm])
        model.zero_grad()
        eager = model(*args)
        eager.backward()
        eager_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        out = compiled(*args)
        out.backward()
        torch.testing.assert_close(out, eager, atol=1e-4, rtol=1e-5)
        for g, g_eager in zip((p.grad for p in model.parameters()), eager_grads):
            torch.testing.assert_close(g, g_eager, atol=1e-4, rtol=1e-4)
