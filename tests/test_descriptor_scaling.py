"""The molecule descriptors standardized with the training split's statistics (``descriptor_scaling``)."""
import json

import pytest
import torch

from graphsam_ext.data import collate
from graphsam_ext.errors import UserError
from graphsam_ext.models import ModelConfig
from graphsam_ext.train import TrainConfig
from graphsam_ext.train.checkpoint import load_checkpoint

from test_models import ATOM_DIM, EDGE_DIM, _molecules, _small
from test_train import cache_dir, tiny_config, write_tiny_csv  # noqa: F401 (cache_dir is a fixture)

MOL_DIM = 5


def _features(generator, rows):
    """Descriptors of very different scales, one column constant."""
    scale = torch.tensor([0.01, 1.0, 30.0, 0.2, 1.0])
    feats = torch.randn(rows, MOL_DIM, generator=generator) * scale + torch.tensor([0.5, -2.0, 100.0, 0.0, 0.0])
    feats[:, 4] = 0.7
    return feats


@pytest.mark.parametrize("seed, train_rows", [(0, 1), (1, 7), (2, 129)])
def test_the_scaled_model_is_the_unscaled_one_on_standardized_features(seed, train_rows):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    scaled = _small(mol_dim=MOL_DIM, mol_scaling=True).eval()
    plain = _small(mol_dim=MOL_DIM, mol_scaling=False).eval()
    plain.load_state_dict({k: v for k, v in scaled.state_dict().items() if not k.startswith("mol_")})
    train = _features(gen, train_rows)
    scaled.fit_mol_scaling(train)

    mean = train.double().mean(0)
    std = train.double().std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a column that does not vary keeps scale 1
    mols = _molecules(gen)
    for g, f in zip(mols, _features(gen, len(mols))):
        g.mol_features = f
    batch = collate(mols)
    expected_batch = collate(mols)
    expected_batch.mol_features = ((batch.mol_features.double() - mean) / std).float()
    torch.testing.assert_close(scaled(batch), plain(expected_batch), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled.mol_mean.double(), mean, rtol=1e-6, atol=1e-6)
    assert scaled.mol_std[4] == 1.0


def test_fit_refuses_what_it_cannot_use():
    model = _small(mol_dim=MOL_DIM, mol_scaling=True)
    with pytest.raises(UserError, match=r"\(molecules >= 1, 5\)"):
        model.fit_mol_scaling(torch.zeros(4, 3))
    with pytest.raises(UserError, match=r"\(molecules >= 1, 5\)"):
        model.fit_mol_scaling(torch.zeros(0, MOL_DIM))
    bad = torch.zeros(4, MOL_DIM)
    bad[2, 1] = float("nan")
    with pytest.raises(UserError, match="NaN or infinity"):
        model.fit_mol_scaling(bad)
    for unscaled in (_small(mol_dim=MOL_DIM, mol_scaling=False), _small()):
        with pytest.raises(UserError, match="without molecule descriptor scaling"):
            unscaled.fit_mol_scaling(torch.zeros(4, MOL_DIM))
    with pytest.raises(UserError, match="mol_scaling"):
        ModelConfig(atom_dim=ATOM_DIM, edge_dim=EDGE_DIM, num_tasks=1, mol_scaling="yes")


def test_training_fits_on_the_training_split_and_predictions_use_the_stored_statistics(tmp_path, cache_dir):
    from graphsam_ext.data import Featurizer
    from graphsam_ext.train import run_experiment

    path = write_tiny_csv(tmp_path / "tiny.csv")
    run_experiment(tiny_config(path, epochs=1, descriptor_scaling=True), tmp_path / "run")
    ckpt_path = tmp_path / "run" / "adam" / "seed0" / "best.pt"
    state = load_checkpoint(ckpt_path)["model_state"]
    train = json.loads((tmp_path / "run" / "splits" / "seed0.json").read_text())["train"]
    smiles = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    feat = Featurizer(descriptors=True)
    every = torch.stack([feat(s).mol_features for s in smiles]).double()
    torch.testing.assert_close(state["mol_mean"].double(), every[train].mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(state["mol_mean"].double(), every.mean(0), rtol=1e-5, atol=1e-6)

    assert_prediction_applies(ckpt_path, "mol_std", smiles[:6], tmp_path)


def assert_prediction_applies(ckpt_path, buffer, smiles, tmp_path):
    """The stored statistics are what prediction applies: scaling ``buffer`` of the checkpoint's
    model state changes the predictions of ``smiles``."""
    from graphsam_ext.train.predict import predict_smiles

    before = predict_smiles(smiles, [ckpt_path]).values
    ckpt = load_checkpoint(ckpt_path)
    ckpt["model_state"][buffer] = ckpt["model_state"][buffer] * 4.0
    torch.save(ckpt, tmp_path / "changed.pt")
    after = predict_smiles(smiles, [tmp_path / "changed.pt"]).values
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))


def test_the_option_reaches_the_model_and_configs_that_predate_it_keep_fixed_scaling():
    assert TrainConfig().model_kwargs()["mol_scaling"] is False
    assert TrainConfig(descriptor_scaling=True).model_kwargs()["mol_scaling"] is True
    stored = TrainConfig(descriptor_scaling=True).to_dict()
    del stored["descriptor_scaling"]
    assert TrainConfig.from_dict(stored).descriptor_scaling is False
    with pytest.raises(UserError, match="--descriptor-scaling"):
        TrainConfig(descriptor_scaling=1)
    with pytest.raises(UserError, match="add --descriptors or drop --descriptor-scaling"):
        TrainConfig(descriptor_scaling=True, descriptors=False)
    # a checkpoint from before the option: no mol_scaling in its config, no statistics in its state
    old_model = _small(mol_dim=MOL_DIM, mol_scaling=False)
    old = old_model.config.to_dict()
    del old["mol_scaling"]
    rebuilt = type(old_model)(ModelConfig.from_dict(old))
    assert rebuilt.config.mol_scaling is False
    rebuilt.load_state_dict(old_model.state_dict())
