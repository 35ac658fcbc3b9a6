"""The BatchNorm on the averaged part of the pooled molecule vector (``pool_norm``: the mean half
of the ``mean_sum`` readout) and its refreshed statistics."""
import json

import pytest
import torch

from graphsam_ext.data import collate
from graphsam_ext.errors import UserError
from graphsam_ext.models import ModelConfig
from graphsam_ext.models.transformer import as_csr_batch
from graphsam_ext.train import TrainConfig
from graphsam_ext.train.checkpoint import load_checkpoint
from graphsam_ext.train.config import PREDATED_FIELDS
from graphsam_ext.train.loop import POOL_NORM_SAMPLE

from test_descriptor_scaling import assert_prediction_applies
from test_models import ATOM_DIM, EDGE_DIM, _graph, _small
from test_train import cache_dir, tiny_config, write_tiny_csv  # noqa: F401 (cache_dir is a fixture)


def _random_molecules(generator, count):
    """``count`` chains and rings of 1 to 9 atoms with random features."""
    mols = []
    for _ in range(count):
        n = int(torch.randint(1, 10, (1,), generator=generator))
        bonds = [(i, i + 1) for i in range(n - 1)]
        if n > 2 and torch.rand(1, generator=generator) < 0.5:
            bonds.append((n - 1, 0))
        mols.append(_graph(n, bonds, generator=generator))
    return mols


def _chunks(mols, size):
    return [collate(mols[i:i + size]) for i in range(0, len(mols), size)]


@pytest.mark.parametrize("seed, count, batch", [(0, 1, 1), (1, 7, 3), (2, 129, 32)])
def test_refresh_sets_the_exact_statistics_of_the_pooled_vectors(seed, count, batch):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _small(pool_norm=True, dropout=0.2)
    mols = _random_molecules(gen, count)
    model.train()
    model.refresh_pool_norm(_chunks(mols, batch))
    assert model.training, "refresh_pool_norm must leave the model in the mode it found it"
    model.eval()
    with torch.no_grad():
        pooled = model._pooled(as_csr_batch(collate(mols)))[:, :model.config.hidden].double()
    torch.testing.assert_close(model.pool_norm.running_mean.double(), pooled.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.pool_norm.running_var.double(), pooled.var(0, unbiased=False),
                               rtol=1e-4, atol=1e-7)


def test_evaluation_normalizes_with_the_stored_statistics_whatever_the_batch():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = _small(pool_norm=True)
    plain = _small(pool_norm=False)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pool_norm.")})
    with torch.no_grad():
        model.pool_norm.weight.uniform_(0.5, 2.0, generator=gen)
        model.pool_norm.bias.normal_(generator=gen)
    mols = _random_molecules(gen, 40)
    model.refresh_pool_norm(_chunks(mols, 16))
    model.eval()
    plain.eval()
    bn = model.pool_norm
    hidden = model.config.hidden
    with torch.no_grad():
        pooled = plain._pooled(as_csr_batch(collate(mols)))
        mean = (pooled[:, :hidden] - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        expected = plain.head(torch.cat([mean, pooled[:, hidden:]], dim=-1))
        whole = model(collate(mols))
        one_by_one = torch.cat([model(collate([m])) for m in mols])
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_by_one, whole, rtol=1e-5, atol=1e-5)


def test_training_uses_batch_statistics_and_a_lone_molecule_the_stored_ones():
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = _small(pool_norm=True)
    mols = _random_molecules(gen, 12)
    model.refresh_pool_norm(_chunks(mols, 12))
    model.train()
    bn = model.pool_norm
    hidden = model.config.hidden
    with torch.no_grad():
        pooled = model._pooled(as_csr_batch(collate(mols)))
        mean = pooled[:, :hidden]
        normed = (mean - mean.mean(0)) / torch.sqrt(mean.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(model(collate(mols)), model.head(torch.cat([normed, pooled[:, hidden:]], dim=-1)),
                                   rtol=1e-5, atol=1e-5)
        lone = model(collate(mols[:1]))
        model.eval()
        torch.testing.assert_close(lone, model(collate(mols[:1])), rtol=1e-5, atol=1e-5)


def test_refresh_refuses_no_molecules_and_a_model_without_the_norm_is_left_alone():
    model = _small(pool_norm=True)
    with pytest.raises(UserError, match="no molecules given"):
        model.refresh_pool_norm([])
    plain = _small(pool_norm=False)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.refresh_pool_norm(_chunks(_random_molecules(torch.Generator().manual_seed(5), 4), 2))
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    with pytest.raises(UserError, match="pool_norm"):
        ModelConfig(atom_dim=ATOM_DIM, edge_dim=EDGE_DIM, num_tasks=1, pool_norm=1)
    with pytest.raises(UserError, match="--pool-norm"):
        TrainConfig(pool_norm="yes")
    with pytest.raises(UserError, match="add --no-pool-norm"):
        TrainConfig(readout="sum")
    assert TrainConfig(readout="sum", pool_norm=False).readout == "sum"
    with pytest.raises(UserError, match="readout 'sum' has none"):
        _small(readout="sum", pool_norm=True)


def test_the_saved_model_carries_statistics_of_its_own_weights(tmp_path, cache_dir):
    from graphsam_ext.data import Featurizer
    from graphsam_ext.train import run_experiment
    from graphsam_ext.train.predict import load_model

    path = write_tiny_csv(tmp_path / "tiny.csv")
    run_experiment(tiny_config(path, epochs=2, pool_norm=True), tmp_path / "run")
    ckpt_path = tmp_path / "run" / "adam" / "seed0" / "best.pt"
    ckpt = load_checkpoint(ckpt_path)
    model = load_model(ckpt)
    stored_mean = model.pool_norm.running_mean.clone()
    stored_var = model.pool_norm.running_var.clone()
    train = json.loads((tmp_path / "run" / "splits" / "seed0.json").read_text())["train"]
    assert len(train) <= POOL_NORM_SAMPLE
    smiles = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    feat = Featurizer(descriptors=True)
    model.refresh_pool_norm(_chunks([feat(smiles[i]) for i in train], 5))
    torch.testing.assert_close(stored_mean, model.pool_norm.running_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stored_var, model.pool_norm.running_var, rtol=1e-4, atol=1e-6)

    assert_prediction_applies(ckpt_path, "pool_norm.running_var", smiles[:6], tmp_path)


@pytest.mark.parametrize("field", sorted(PREDATED_FIELDS))
def test_a_stored_config_without_a_later_field_gets_what_it_ran(field):
    stored = TrainConfig().to_dict()
    del stored[field]
    assert getattr(TrainConfig.from_dict(stored), field) == PREDATED_FIELDS[field]


def test_the_option_reaches_the_model_and_checkpoints_that_predate_it_are_without_it():
    assert TrainConfig().model_kwargs()["pool_norm"] is True
    assert TrainConfig(pool_norm=False).model_kwargs()["pool_norm"] is False
    old_model = _small(pool_norm=False)
    old = old_model.config.to_dict()
    del old["pool_norm"]
    rebuilt = type(old_model)(ModelConfig.from_dict(old))
    assert rebuilt.pool_norm is None
    rebuilt.load_state_dict(old_model.state_dict())


def test_a_batchnorm1d_state_loads_into_the_pooled_norm():
    from graphsam_ext.models.readout import PooledNorm

    torch.manual_seed(6)
    bn = torch.nn.BatchNorm1d(5)
    bn(torch.randn(9, 5))
    norm = PooledNorm(5)
    norm.load_state_dict(bn.state_dict())
    x = torch.randn(4, 5)
    torch.testing.assert_close(norm.eval()(x), bn.eval()(x))
