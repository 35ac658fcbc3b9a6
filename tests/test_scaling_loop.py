"""The training loop's scaling options: --accumulate, --precision bf16, --clip-grad-norm and the
BatchNorm default, on a tiny CSV."""
import math

import pytest
import torch

from graphsam_ext.errors import UserError
from graphsam_ext.train import OPTIMIZER_NAMES, TrainConfig
from graphsam_ext.train.experiment import load_data, split_for_seed
from graphsam_ext.train.loop import SeedRun
from test_train import write_tiny_csv

# float32 weights after 2 epochs: accumulated micro-batches add the same gradient terms in
# another order; element-wise within ATOL and the gap between the runs under REL of the distance
# the weights moved. The attention key biases (GAUGE) have zero gradient in exact arithmetic, so
# Adam turns their rounding noise into full steps of either sign: left out of the element-wise
# check (see tests/test_scaling_ddp.py).
ATOL, REL = 1e-4, 1e-2
GAUGE = "lin_key.bias"


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return write_tiny_csv(tmp_path_factory.mktemp("scaling") / "tiny.csv")


def _config(csv, **kw):
    # no pooled BatchNorm: its batch statistics would make micro-batches differ from one large batch
    cfg = dict(data_path=str(csv), smiles_column="mol", target_columns=["solubility", "logp"], split="random",
               epochs=3, seeds=1, batch_size=8, hidden=16, layers=1, heads=2, edge_hidden=8, dropout=0.0,
               schedule="constant", pool_norm=False)
    cfg.update(kw)
    return TrainConfig(**cfg)


def _run(cfg, run_dir, epochs=2):
    dataset = load_data(cfg)
    data = split_for_seed(cfg, dataset, 0, run_dir)
    runner = SeedRun(cfg, cfg.optimizers[0], 0, data, run_dir / cfg.optimizers[0], "cpu")
    runner.run(stop_after_epochs=epochs)
    return runner


@pytest.mark.parametrize("optimizer", ["sam", "graphsam"])
def test_accumulating_four_micro_batches_equals_batches_four_times_as_large(csv, tmp_path, optimizer):
    big = _run(_config(csv, optimizers=[optimizer], batch_size=8), tmp_path / "big")
    acc = _run(_config(csv, optimizers=[optimizer], batch_size=2, accumulate=4), tmp_path / "acc")
    assert acc.steps_per_epoch == big.steps_per_epoch == 4
    assert [h["passes"] for h in acc.history] == [h["passes"] for h in big.history]
    start = _run(_config(csv, optimizers=[optimizer]), tmp_path / "start", epochs=0)
    sd_big, sd_acc, sd_start = big.model.state_dict(), acc.model.state_dict(), start.model.state_dict()
    assert max((sd_big[k] - sd_start[k]).abs().max().item() for k in sd_big) > 1e-3
    for k in sd_big:
        if not k.endswith(GAUGE):
            torch.testing.assert_close(sd_acc[k], sd_big[k], rtol=0, atol=ATOL)
    flat = lambda d: torch.cat([t.reshape(-1).double() for t in d.values()])  # noqa: E731
    assert (flat(sd_acc) - flat(sd_big)).norm() <= REL * (flat(sd_big) - flat(sd_start)).norm()
    # the loss of a step is the mean over all its molecules' labels in both runs
    assert [h["train_loss"] for h in acc.history] == pytest.approx([h["train_loss"] for h in big.history], rel=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_autocast_trains_the_default_model_with_every_optimizer(csv, tmp_path, optimizer, precision):
    # the default model (no model options given), one epoch of 4 steps under bf16 autocast, or
    # fp16 autocast with a GradScaler (tests/test_scaling_amp_loop.py: its resume)
    cfg = TrainConfig(data_path=str(csv), smiles_column="mol", target_columns=["solubility", "logp"],
                      optimizers=[optimizer], epochs=2, seeds=1, batch_size=8, precision=precision)
    runner = _run(cfg, tmp_path, epochs=1)
    record = runner.history[0]
    assert record["steps"] == 4
    assert math.isfinite(record["train_loss"])
    assert all(math.isfinite(v) for v in record["val"].values())
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())


def test_clip_grad_norm_reaches_the_optimizers(csv, tmp_path):
    for name in ("adam", "sam", "graphsam"):
        clipped = _run(_config(csv, optimizers=[name], clip_grad_norm=1e-3), tmp_path / f"{name}-clip", epochs=1)
        plain = _run(_config(csv, optimizers=[name]), tmp_path / f"{name}-plain", epochs=1)
        a, b = clipped.model.state_dict(), plain.model.state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), name
    with pytest.raises(UserError, match="clip-grad-norm"):
        _config(csv, optimizers=["looksam"], clip_grad_norm=1.0)
    with pytest.raises(UserError, match="clip-grad-norm"):
        _config(csv, clip_grad_norm=0.0)


def test_option_errors(csv):
    with pytest.raises(UserError, match="accumulate"):
        _config(csv, accumulate=0)
    with pytest.raises(UserError, match="local-perturbation"):
        _config(csv, optimizers=["graphsam"], local_perturbation=True)
    with pytest.raises(UserError, match="precision"):
        _config(csv, precision="fp8")
