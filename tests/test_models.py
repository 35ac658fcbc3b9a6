"""MolecularGraphTransformer and readouts on hand-made graphs (no RDKit needed)."""
import math

import pytest
import torch

from graphsam_ext.data import BOND_FEATURE_DIM, Graph, collate
from graphsam_ext.models import ModelConfig, MolecularGraphTransformer, Readout

ATOM_DIM, EDGE_DIM = 12, 5


def _graph(num_atoms, bonds, atom_dim=ATOM_DIM, edge_dim=EDGE_DIM, generator=None):
    src = [a for a, b in bonds] + [b for a, b in bonds]
    dst = [b for a, b in bonds] + [a for a, b in bonds]
    return Graph(
        x=torch.randn(num_atoms, atom_dim, generator=generator),
        edge_index=torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        edge_attr=torch.randn(len(src), edge_dim, generator=generator),
    )


def _molecules(generator=None):
    return [
        _graph(3, [(0, 1), (1, 2)], generator=generator),
        _graph(1, [], generator=generator),  # a lone ion: no edges at all
        _graph(6, [(i, (i + 1) % 6) for i in range(6)], generator=generator),
        _graph(4, [(0, 1), (2, 3)], generator=generator),  # two fragments (a salt)
    ]


def _small(**kw):
    cfg = dict(atom_dim=ATOM_DIM, edge_dim=EDGE_DIM, num_tasks=3, hidden=16, layers=2, heads=4, edge_hidden=8,
               dropout=0.0)
    cfg.update(kw)
    cfg.setdefault("pool_norm", cfg.get("readout") != "sum")  # the sum readout has no averaged part to normalize
    return MolecularGraphTransformer(ModelConfig(**cfg))


@pytest.mark.parametrize("readout", ["mean_sum", "mean", "sum", "attention"])
def test_output_shape_and_finite(readout):
    torch.manual_seed(0)
    model = _small(readout=readout)
    out = model(collate(_molecules()))
    assert out.shape == (4, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("readout", ["mean_sum", "mean", "sum", "attention"])
def test_molecules_do_not_influence_each_other(readout):
    """A molecule's prediction is the same alone or batched with others."""
    torch.manual_seed(0)
    model = _small(readout=readout).eval()
    mols = _molecules(torch.Generator().manual_seed(1))
    batched = model(collate(mols))
    for i, g in enumerate(mols):
        torch.testing.assert_close(model(collate([g]))[0], batched[i], rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = _small(readout="attention")
    model(collate(_molecules())).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_library_default_model_is_the_command_line_default():
    from graphsam_ext.data import ATOM_FEATURE_DIM
    from graphsam_ext.train import TrainConfig

    lib = ModelConfig(atom_dim=ATOM_FEATURE_DIM, edge_dim=BOND_FEATURE_DIM, num_tasks=1)
    cli = ModelConfig(atom_dim=ATOM_FEATURE_DIM, edge_dim=BOND_FEATURE_DIM, num_tasks=1, **TrainConfig().model_kwargs())
    assert lib == cli
    # the searched default (docs/model.md): small enough to train faster than chemprop's D-MPNN
    assert 50_000 <= MolecularGraphTransformer(lib).num_parameters() <= 200_000


def _pair_graph(num_atoms, pairs, bins):
    """Pair edges laid out like the featurizer's: [bond | is_bond | one-hot distance 1..bins | disconnected]."""
    src, dst, rows = [], [], []
    for a, b, d in pairs:
        for s, t in ((a, b), (b, a)):
            row = torch.zeros(BOND_FEATURE_DIM + bins + 2)
            row[BOND_FEATURE_DIM] = float(d == 1)
            row[BOND_FEATURE_DIM + min(d, bins)] = 1.0
            src.append(s)
            dst.append(t)
            rows.append(row)
    return Graph(torch.randn(num_atoms, ATOM_DIM), torch.tensor([src, dst]), torch.stack(rows))


def test_pair_mode_uses_a_learned_distance_bias():
    torch.manual_seed(0)
    bins = 3
    edge_dim = BOND_FEATURE_DIM + bins + 2
    model = _small(edge_dim=edge_dim, attention="pairs", distance_bins=bins).eval()
    batch = collate([_pair_graph(4, [(0, 1, 1), (1, 2, 1), (0, 2, 2), (0, 3, 3), (2, 3, 1)], bins)])
    before = model(batch)
    # the bias starts at zero (attention initially ignores distance); a bias on distance 3 only
    # must change the output, a bias equal for every distance must not (softmax is shift-invariant)
    with torch.no_grad():
        for emb in model.distance_bias:
            emb.weight.fill_(2.0)
    torch.testing.assert_close(model(batch), before, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for emb in model.distance_bias:
            emb.weight.zero_()
            emb.weight[2].fill_(-5.0)
    assert not torch.allclose(model(batch), before, atol=1e-4)


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="divisible by heads"):
        ModelConfig(atom_dim=4, edge_dim=4, num_tasks=1, hidden=30, heads=4)
    with pytest.raises(ValueError, match="readout must be one of mean_sum, mean, sum, attention"):
        ModelConfig(atom_dim=4, edge_dim=4, num_tasks=1, readout="max")
    with pytest.raises(ValueError, match="distance_bins"):
        ModelConfig(atom_dim=4, edge_dim=4, num_tasks=1, attention="pairs")
    with pytest.raises(ValueError, match="num_tasks"):
        ModelConfig(atom_dim=4, edge_dim=4, num_tasks=0)


def test_feature_width_mismatch_is_reported():
    model = _small()
    batch = collate([_graph(3, [(0, 1)], atom_dim=ATOM_DIM + 1)])
    with pytest.raises(ValueError, match="do not match the model"):
        model(batch)


def test_config_round_trip():
    model = _small(readout="sum")
    clone = MolecularGraphTransformer(ModelConfig.from_dict(model.config.to_dict()))
    clone.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**model.config.to_dict(), "depth": 3})


def test_attention_readout_is_a_softmax_weighted_sum():
    torch.manual_seed(0)
    pool = Readout("attention", 5)
    h = torch.randn(5, 5)
    batch = torch.tensor([0, 0, 0, 1, 1])
    out = pool(h, batch, 3)
    score = pool.gate(h).squeeze(-1)
    for g, idx in ((0, [0, 1, 2]), (1, [3, 4])):
        w = torch.softmax(score[idx], 0)
        torch.testing.assert_close(out[g], (w[:, None] * h[idx]).sum(0))
    assert torch.equal(out[2], torch.zeros(5))  # a graph without atoms pools to zeros


def test_mean_and_sum_readouts():
    h = torch.arange(12.0).reshape(4, 3)
    batch = torch.tensor([0, 1, 1, 1])
    torch.testing.assert_close(Readout("sum", 3)(h, batch, 2), torch.stack([h[0], h[1:].sum(0)]))
    torch.testing.assert_close(Readout("mean", 3)(h, batch, 2), torch.stack([h[0], h[1:].mean(0)]))
    assert not math.isnan(Readout("mean", 3)(h, batch, 3)[2].sum().item())


def test_mean_sum_readout_is_the_mean_beside_the_scaled_sum():
    h = torch.randn(7, 3)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    out = Readout("mean_sum", 3, sum_scale=4.0)(h, batch, 3)
    assert out.shape == (3, 6)
    torch.testing.assert_close(out[0], torch.cat([h[:3].mean(0), h[:3].sum(0) / 4.0]))
    torch.testing.assert_close(out[1], torch.cat([h[3:].mean(0), h[3:].sum(0) / 4.0]))
    assert torch.equal(out[2], torch.zeros(6))  # a molecule without atoms


def test_descriptors_reach_the_head_and_are_required():
    torch.manual_seed(0)
    mols = _molecules()
    model = _small(mol_dim=3)
    for g in mols:
        g.mol_features = torch.randn(3)
    batch = collate(mols)
    out = model(batch)
    batch.mol_features = batch.mol_features + 1.0
    assert not torch.allclose(model(batch), out)
    batch.mol_features = None
    with pytest.raises(ValueError, match="descriptors=True"):
        model(batch)


def test_model_dropout_is_the_fused_op_on_cpu_and_torchs_elsewhere(monkeypatch):
    from graphsam_ext import _backend
    from graphsam_ext.nn import ModelDropout
    from graphsam_ext.nn import dropout as dropout_module
    from graphsam_ext.ops import dropout

    x = torch.randn(37, 19)
    module = ModelDropout(0.3)
    # per layer the residual one and the feed-forward one, and the head's
    assert sum(isinstance(m, ModelDropout) for m in _small(dropout=0.1).modules()) == 2 * 2 + 1
    torch.manual_seed(5)
    got = module(x)
    torch.manual_seed(5)
    if _backend.use_native("cpu"):
        torch.testing.assert_close(got, dropout(x, 0.3), rtol=0, atol=0)
    else:
        torch.testing.assert_close(got, torch.nn.functional.dropout(x, 0.3), rtol=0, atol=0)
    monkeypatch.setattr(dropout_module, "_native_cpu", lambda: False)
    torch.manual_seed(5)
    fallback = module(x)
    torch.manual_seed(5)
    torch.testing.assert_close(fallback, torch.nn.functional.dropout(x, 0.3), rtol=0, atol=0)
    assert torch.equal(module.eval()(x), x)
