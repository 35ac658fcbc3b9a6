"""The bond message-passing block beside the attention (``local_mpnn``), against a per-bond loop."""
import pytest
import torch

from graphsam_ext.data import BOND_FEATURE_DIM, collate
from graphsam_ext.errors import UserError
from graphsam_ext.models import ModelConfig, MolecularGraphTransformer
from graphsam_ext.nn import BondMessagePassing, GraphTransformerLayer
from graphsam_ext.train import TrainConfig

from test_models import ATOM_DIM, EDGE_DIM, _molecules, _pair_graph, _small


def _loop_reference(block, x, dst, src, edge_attr):
    """The block's definition, one bond at a time in float64."""
    w, b = block.lin_edge.weight.double(), block.lin_edge.bias.double()
    summed = torch.zeros_like(x, dtype=torch.float64)
    for k in range(dst.numel()):
        message = x[src[k]].double() + edge_attr[k].double() @ w.T + b
        summed[dst[k]] += torch.nn.functional.gelu(message)
    inner = (1 + block.eps.double()) * x.double() + summed
    lin1, lin2 = block.mlp[0], block.mlp[2]
    hidden = torch.nn.functional.gelu(inner @ lin1.weight.double().T + lin1.bias.double())
    return hidden @ lin2.weight.double().T + lin2.bias.double()


@pytest.mark.parametrize("seed, num_nodes, num_bonds, hidden, edge_dim", [
    (0, 1, 0, 8, 3),        # a lone atom: no bonds at all
    (1, 7, 13, 5, 1),       # odd widths
    (2, 33, 71, 24, 7),     # repeated bonds and atoms without bonds
])
def test_block_matches_the_per_bond_loop(seed, num_nodes, num_bonds, hidden, edge_dim):
    gen = torch.Generator().manual_seed(seed)
    print(f"seed {seed}")
    block = BondMessagePassing(hidden, edge_dim)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    x = torch.randn(num_nodes, hidden, generator=gen)
    dst = torch.randint(0, num_nodes, (num_bonds,), generator=gen)
    src = torch.randint(0, num_nodes, (num_bonds,), generator=gen)
    edge_attr = torch.randn(num_bonds, edge_dim, generator=gen)
    out = block(x, dst, src, edge_attr)
    torch.testing.assert_close(out.double(), _loop_reference(block, x, dst, src, edge_attr), rtol=1e-4, atol=1e-4)


def test_the_sum_counts_neighbours_where_attention_alone_averages():
    """A centre atom with 1 or 3 identical neighbours: the attention's softmax average is the
    same for both, the block's sum is not."""
    torch.manual_seed(0)
    hidden = 8
    block = BondMessagePassing(hidden, 2)
    x = torch.randn(1, hidden).repeat(4, 1)
    edge = torch.randn(1, 2).repeat(3, 1)
    one = block(x[:2], torch.tensor([0]), torch.tensor([1]), edge[:1])[0]
    three = block(x, torch.tensor([0, 0, 0]), torch.tensor([1, 2, 3]), edge)[0]
    assert not torch.allclose(one, three, atol=1e-3)


def test_layer_adds_the_block_to_the_attention_residual():
    torch.manual_seed(0)
    hidden, heads, edge_dim = 16, 4, 6
    plain = GraphTransformerLayer(hidden, heads, edge_dim=edge_dim, dropout=0.0)
    local = GraphTransformerLayer(hidden, heads, edge_dim=edge_dim, dropout=0.0, local=True)
    local.load_state_dict(plain.state_dict(), strict=False)
    batch = collate(_molecules(torch.Generator().manual_seed(3)))
    x = torch.randn(batch.x.shape[0], hidden)
    e = torch.randn(batch.col.numel(), edge_dim)
    dst = torch.repeat_interleave(torch.arange(x.shape[0]), batch.rowptr.diff())
    bonds = (dst, batch.col, e)
    # with the block's output forced to zero the two layers agree; with the block, the
    # difference before the feed-forward part is exactly the block's output
    attn = plain.attn.forward_csr(plain.norm_attn(x), batch.rowptr, batch.col, e)
    h = x + plain.attn_out(attn) + local.local(local.norm_attn(x), *bonds)
    expected = h + local.ffn(local.norm_ffn(h))
    torch.testing.assert_close(local(x, batch.rowptr, batch.col, e, None, bonds), expected)
    with pytest.raises(ValueError, match="bonds"):
        local(x, batch.rowptr, batch.col, e)
    with pytest.raises(ValueError, match="edge_dim"):
        GraphTransformerLayer(hidden, heads, edge_dim=None, local=True)


def test_pair_mode_passes_messages_over_the_distance_one_pairs_only():
    torch.manual_seed(0)
    bins = 3
    model = _small(edge_dim=BOND_FEATURE_DIM + bins + 2, attention="pairs", distance_bins=bins, local=True).eval()
    pairs = [(0, 1, 1), (1, 2, 1), (0, 2, 2), (0, 3, 3), (2, 3, 1)]
    batch = collate([_pair_graph(4, pairs, bins)])
    e = model.bond_embed(batch.edge_attr)
    dst, src, attr = model._bonds(batch.rowptr, batch.col, e, model._distance_index(batch.edge_attr))
    got = sorted(zip(dst.tolist(), src.tolist()))
    bonded = sorted([(b, a) for a, b, d in pairs if d == 1] + [(a, b) for a, b, d in pairs if d == 1])
    assert got == bonded
    rows = torch.repeat_interleave(torch.arange(4), batch.rowptr.diff())
    for k in range(dst.numel()):
        edge = ((rows == dst[k]) & (batch.col == src[k])).nonzero().item()
        torch.testing.assert_close(attr[k], e[edge])


@pytest.mark.parametrize("attention", ["bonds", "pairs"])
def test_local_model_trains_and_keeps_molecules_apart(attention):
    torch.manual_seed(0)
    if attention == "pairs":
        bins = 3
        model = _small(edge_dim=BOND_FEATURE_DIM + bins + 2, attention="pairs", distance_bins=bins, local=True)
        mols = [_pair_graph(4, [(0, 1, 1), (1, 2, 1), (0, 2, 2), (0, 3, 3), (2, 3, 1)], bins),
                _pair_graph(2, [(0, 1, 1)], bins), _pair_graph(3, [(0, 1, 1), (1, 2, 1), (0, 2, 2)], bins)]
    else:
        model = _small(local=True)
        mols = _molecules(torch.Generator().manual_seed(1))
    model(collate(mols)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.eval()
    batched = model(collate(mols))
    for i, g in enumerate(mols):
        torch.testing.assert_close(model(collate([g]))[0], batched[i], rtol=1e-5, atol=1e-5)


def test_command_line_option_reaches_the_model_and_old_configs_load():
    assert TrainConfig().model_kwargs()["local"] is True
    assert TrainConfig(local_mpnn=False).model_kwargs()["local"] is False
    # a run directory's config.json from before the option existed resumes without the block
    stored = TrainConfig().to_dict()
    del stored["local_mpnn"]
    assert TrainConfig.from_dict(stored).local_mpnn is False
    with pytest.raises(UserError, match="--local-mpnn"):
        TrainConfig(local_mpnn="yes")
    old = ModelConfig(atom_dim=ATOM_DIM, edge_dim=EDGE_DIM, num_tasks=1).to_dict()
    del old["local"]
    assert ModelConfig.from_dict(old).local is False
    model = MolecularGraphTransformer(ModelConfig(atom_dim=ATOM_DIM, edge_dim=EDGE_DIM, num_tasks=1, local=True))
    assert sum(1 for layer in model.layers if layer.local is not None) == len(model.layers)
    with pytest.raises(UserError, match="local"):
        ModelConfig(atom_dim=ATOM_DIM, edge_dim=EDGE_DIM, num_tasks=1, local=1)
