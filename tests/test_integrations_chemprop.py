"""chemprop v2 MPNN trained by chemprop's own Lightning loop with our optimizers
(graphsam_ext.integrations.chemprop.use_optimizer), against our per-tensor reference GraphSAM
driving the same chemprop model by hand."""
import copy
import warnings

import pytest
import torch

pytest.importorskip("chemprop")
pl = pytest.importorskip("lightning.pytorch")

from chemprop import data as cdata  # noqa: E402  (after the importorskips above)
from chemprop import featurizers, models  # noqa: E402
from chemprop import nn as cnn  # noqa: E402
from chemprop.schedulers import build_NoamLike_LRSched  # noqa: E402

from graphsam_ext.errors import UserError  # noqa: E402
from graphsam_ext.integrations.chemprop import use_optimizer  # noqa: E402
from graphsam_ext.optim import GraphSAM  # noqa: E402

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "O=C(O)c1ccccc1C(=O)O", "ClCCl",
          "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "C1CCNCC1", "OCC(O)CO", "c1ccc2ccccc2c1", "CS(C)=O", "CCCCCCCC"]
BATCH_SIZE = 4
BATCHES = len(SMILES) // BATCH_SIZE
EPOCHS = 2
# chemprop's Noam-like schedule: warm-up over 1 epoch from init_lr to max_lr, then decay to final_lr
LRS = dict(warmup_epochs=1, init_lr=1e-3, max_lr=1e-2, final_lr=1e-3)


def _double_batch(items):
    """chemprop's collate, in float64 (Lightning's 64-true converts the module, not chemprop's
    BatchMolGraph, whose V and E stay float32)."""
    batch = cdata.collate_batch(items)
    batch.bmg.V, batch.bmg.E = batch.bmg.V.double(), batch.bmg.E.double()
    return batch._replace(**{k: getattr(batch, k).double() for k in ("X_d", "Y", "w")
                             if getattr(batch, k) is not None})


def _loader(double=False):
    targets = [[float(len(s)) / 10.0] for s in SMILES]
    points = [cdata.MoleculeDatapoint.from_smi(s, y) for s, y in zip(SMILES, targets)]
    dataset = cdata.MoleculeDataset(points, featurizers.SimpleMoleculeMolGraphFeaturizer())
    if double:
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=False, collate_fn=_double_batch)
    return cdata.build_dataloader(dataset, batch_size=BATCH_SIZE, shuffle=False, num_workers=0)


def _mpnn():
    torch.manual_seed(0)
    return models.MPNN(cnn.BondMessagePassing(d_h=32, depth=2), cnn.MeanAggregation(),
                       cnn.RegressionFFN(input_dim=32, hidden_dim=16), **LRS)


class Counting(pl.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the one this step uses

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append((getattr(trainer.optimizers[0], "closure_calls", None), self._lr))


def _fit(model, precision="32-true", **kwargs):
    counting = Counting()
    trainer = pl.Trainer(max_epochs=EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, precision=precision,
                         callbacks=[counting], num_sanity_val_steps=0, limit_val_batches=0, **kwargs)
    calls = {"n": 0}
    training_step = model.training_step

    def counted(*args, **kw):
        calls["n"] += 1
        return training_step(*args, **kw)

    model.training_step = counted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader(double=precision == "64-true"))
    return trainer, calls["n"], counting.steps


def test_graphsam_in_chemprops_trainer_equals_the_reference_oracle():
    model = _mpnn()
    start = copy.deepcopy(model)
    use_optimizer(model, "graphsam", rho=0.05, beta=0.9, gamma=0.5)
    trainer, training_steps, steps = _fit(model, precision="64-true")
    opt = trainer.optimizers[0]
    assert isinstance(opt, GraphSAM) and opt.implementation == "fused"
    assert training_steps == EPOCHS * (BATCHES + 1)

    # the oracle: our per-tensor reference engine on the same chemprop model, by hand, in float64,
    # with chemprop's own schedule function on it and chemprop's own training_step as the loss
    initial = [p.detach().double().clone() for p in start.parameters()]
    oracle = start.double().train()
    ref = GraphSAM(oracle.parameters(), lr=LRS["init_lr"], rho=0.05, beta=0.9, gamma=0.5, implementation="reference")
    sched = build_NoamLike_LRSched(ref, LRS["warmup_epochs"] * BATCHES, (EPOCHS - LRS["warmup_epochs"]) * BATCHES,
                                   LRS["init_lr"], LRS["max_lr"], LRS["final_lr"])
    oracle_lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # training_step's self.log without a Trainer
        for _ in range(EPOCHS):
            ref.start_epoch()
            for i, batch in enumerate(_loader(double=True)):

                def closure(batch=batch, i=i):
                    loss = oracle.training_step(batch, i)
                    loss.backward()
                    return loss
                ref.step(closure)
                oracle_lrs.append(ref.param_groups[0]["lr"])
                sched.step()
    assert [lr for _, lr in steps] == pytest.approx(oracle_lrs, rel=1e-12)
    assert len(set(oracle_lrs)) > 2  # the schedule moved the learning rate
    got = dict(model.named_parameters())
    for name, expected in oracle.named_parameters():
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], expected, rtol=1e-10, atol=1e-12, msg=name)
    moved = max(float((p - q.detach()).abs().max()) for p, q in zip(initial, oracle.parameters()))
    assert moved > 1e-4


def test_sam_calls_chemprops_training_step_twice_per_step():
    model = use_optimizer(_mpnn(), "sam", rho=0.05)
    trainer, training_steps, steps = _fit(model)
    assert training_steps == 2 * EPOCHS * BATCHES
    assert [c for c, _ in steps] == [2 * (k + 1) for k in range(EPOCHS * BATCHES)]


def test_graphsam_calls_chemprops_training_step_once_inside_an_epoch():
    model = use_optimizer(_mpnn(), "graphsam")
    trainer, training_steps, steps = _fit(model)
    calls = [c for c, _ in steps]
    per_step = [b - a for a, b in zip([0] + calls, calls)]
    assert per_step == ([2] + [1] * (BATCHES - 1)) * EPOCHS
    assert trainer.optimizers[0].epoch == EPOCHS - 1


def test_asam_is_adaptive_sam_and_adam_is_chemprops_own():
    model = use_optimizer(_mpnn(), "asam", rho=0.5)
    trainer, _, _ = _fit(model)
    assert trainer.optimizers[0].adaptive
    plain = use_optimizer(_mpnn(), "adam")
    trainer, training_steps, _ = _fit(plain)
    assert isinstance(trainer.optimizers[0], torch.optim.Adam) and training_steps == EPOCHS * BATCHES


def test_accumulation_is_refused_in_chemprops_trainer():
    model = use_optimizer(_mpnn(), "graphsam")
    with pytest.raises(UserError, match="accumulate_grad_batches"):
        _fit(model, accumulate_grad_batches=2)


def test_bad_arguments_are_named():
    with pytest.raises(UserError, match="optimizer 'lbfgs'"):
        use_optimizer(_mpnn(), "lbfgs")
    with pytest.raises(UserError, match="expected a chemprop MPNN"):
        use_optimizer(torch.nn.Linear(2, 2), "sam")
    with pytest.raises(ValueError, match="rho"):
        use_optimizer(_mpnn(), "sam", rho=-1.0)
    model = use_optimizer(_mpnn(), "sam")
    with pytest.raises(UserError, match="already trains"):
        use_optimizer(model, "graphsam")


def test_importing_graphsam_ext_does_not_import_chemprop_or_lightning():
    import subprocess
    import sys

    code = ("import sys, graphsam_ext, graphsam_ext.optim, graphsam_ext.models, graphsam_ext.integrations; "
            "print(sorted(m for m in ('chemprop', 'lightning', 'torch_geometric') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("optimizer, per_epoch", [("graphsam", lambda t: t + 1), ("sam", lambda t: 2 * t)])
def test_chemprops_own_cli_trains_with_our_optimizer(tmp_path, optimizer, per_epoch):
    """graphsam_ext/peers/chemprop_optimizer_launcher.py: chemprop's `chemprop train` with ours."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import graphsam_ext

    launcher = Path(graphsam_ext.__file__).parent / "peers" / "chemprop_optimizer_launcher.py"
    data = tmp_path / "data.csv"
    data.write_text("smiles,y\n" + "".join(f"{s},{len(s) / 10}\n" for s in SMILES))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps([{"train": list(range(8)), "val": [8, 9], "test": [10, 11]}]))
    epochs, batches = 2, 2
    cmd = [sys.executable, str(launcher), "--optimizer", optimizer, "--optimizer-args", '{"rho": 0.01}',
           "--graphsam-ext-path", str(Path(graphsam_ext.__file__).parents[1]), str(tmp_path / "timing.json"),
           "train", "-i", str(data), "-s", "smiles", "--target-columns", "y", "-t", "regression",
           "--splits-file", str(splits), "--epochs", str(epochs), "--warmup-epochs", "1", "-b", "4",
           "--num-workers", "0", "--accelerator", "cpu", "-o", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["optimizer"]["name"] == optimizer and timing["optimizer"]["options"] == {"rho": 0.01}
    (fit,) = timing["optimizer"]["fits"]
    assert fit["class"] == {"graphsam": "GraphSAM", "sam": "SAM"}[optimizer]
    assert fit["steps"] == epochs * batches
    assert fit["closure_calls"] == epochs * per_epoch(batches)
    assert len(timing["fits"][0]["epochs"]) == epochs  # chemprop_launcher's clock ran too
    assert (tmp_path / "run" / "model_0" / "test_predictions.csv").is_file()
