"""Training pieces: metrics, losses, schedules, optimizer factory, the epoch loop with early
stopping and exact resume, and multi-seed experiments on a tiny CSV."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

from graphsam_ext.errors import UserError
from graphsam_ext.train import (
    OPTIMIZER_NAMES,
    StepSchedule,
    TargetScaler,
    TrainConfig,
    build_optimizer,
    lr_at,
    mae,
    masked_bce,
    masked_mse,
    prc_auc,
    rmse,
    roc_auc,
)
from graphsam_ext.train.metrics import evaluate, is_better

SMILES = [
    "CCO", "CCN", "CCC", "CCCl", "CC(=O)O", "CC(C)O", "c1ccccc1", "c1ccccc1O", "c1ccccc1N", "c1ccccc1C",
    "c1ccncc1", "c1ccncc1C", "C1CCCCC1", "C1CCCCC1O", "C1CCNCC1", "C1CCOC1", "c1ccc2ccccc2c1", "c1ccc2[nH]ccc2c1",
    "OC(=O)c1ccccc1", "CC(=O)Nc1ccccc1", "CN1CCCC1", "c1ccsc1", "c1ccoc1", "C1CC1", "C1CC1C", "FC(F)F",
    "CCOC(=O)C", "CCCCCC", "c1cnc2ccccc2c1", "O=C1CCCCC1", "CC#N", "NCCO",
]


def write_tiny_csv(path, classification=False):
    """A CSV with non-default column names ('mol' holds the SMILES) and a missing label."""
    rng = np.random.default_rng(0)
    lines = ["mol,solubility,toxic" if classification else "mol,solubility,logp"]
    for i, s in enumerate(SMILES):
        a = rng.normal()
        b = int(i % 3 == 0) if classification else rng.normal() + len(s) / 10
        lines.append(f"{s},{a:.3f},{'' if i == 5 else b}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_config(path, **kw):
    cfg = dict(data_path=str(path), smiles_column="mol", target_columns=["solubility", "logp"], split="random",
               optimizers=["adam"], epochs=3, seeds=1, batch_size=8, hidden=16, layers=1, heads=2, edge_hidden=8,
               dropout=0.1, schedule="paper", warmup_epochs=1, decay_epochs=3)
    cfg.update(kw)
    return TrainConfig(**cfg)


# -- metrics -----------------------------------------------------------------------------------------
def _pairwise_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 40)
        s = rng.integers(0, 6, 40).astype(float)  # many ties
        assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_prc_auc_by_hand():
    # points (recall, precision): (0,1) (.5,1) (.5,.5) (1,2/3) (1,.5) -> 0.5 + 0.5 * (0.5 + 2/3) / 2
    assert prc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 0.25 * (0.5 + 2 / 3))
    assert prc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert math.isnan(prc_auc([0, 0], [0.1, 0.2]))


def test_regression_metrics():
    assert rmse([1.0, 2.0], [1.0, 4.0]) == pytest.approx(math.sqrt(2.0))
    assert mae([1.0, 2.0], [0.0, 4.0]) == pytest.approx(1.5)


def test_evaluate_masks_labels_and_skips_one_class_tasks():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1]], dtype=float)
    p = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1], [0.95, 0.9]])
    mask = np.array([[1, 1], [1, 1], [1, 1], [0, 0]], dtype=bool)  # row 3 missing: task 1 has one class
    out = evaluate(y, p, mask, "classification")
    assert out["roc_auc"] == 1.0 and out["roc_auc_tasks"] == 1
    with pytest.raises(ValueError, match="shapes"):
        evaluate(y, p[:2], mask, "classification")
    assert is_better("rmse", 0.5, 0.6) and not is_better("roc_auc", 0.5, 0.6) and is_better("roc_auc", 0.1, None)
    assert not is_better("rmse", float("nan"), 1.0)


# -- losses, targets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_fn", [masked_bce, masked_mse])
def test_masked_losses_ignore_missing_labels(loss_fn):
    torch.manual_seed(0)
    pred = torch.randn(5, 3, requires_grad=True)
    y = torch.randint(0, 2, (5, 3)).float()
    mask = torch.rand(5, 3) > 0.4
    y2 = torch.where(mask, y, torch.full_like(y, float("nan")))
    loss = loss_fn(pred, y, mask)
    assert loss_fn(pred, y2, mask).item() == pytest.approx(loss.item())
    loss.backward()
    assert torch.all(pred.grad[~mask] == 0)
    assert loss_fn(pred, y, torch.zeros_like(mask)).item() == 0.0


def test_target_scaler_uses_present_labels_only():
    y = torch.tensor([[1.0, 100.0], [3.0, 0.0], [5.0, 200.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    s = TargetScaler.fit(y, mask)
    torch.testing.assert_close(s.mean, torch.tensor([3.0, 150.0]))
    torch.testing.assert_close(s.inverse_transform(s.transform(y)), y)
    s2 = TargetScaler.from_state_dict(s.state_dict())
    torch.testing.assert_close(s2.std, s.std)


# -- schedules -----------------------------------------------------------------------------------------
def test_paper_schedule_warms_up_decays_then_stays_flat():
    kw = dict(schedule="paper", steps_per_epoch=10, max_lr=1e-3, init_lr=1e-4, final_lr=1e-4, warmup_epochs=2,
              decay_epochs=30, total_epochs=100)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(10, **kw) == pytest.approx(5.5e-4)
    assert lr_at(20, **kw) == pytest.approx(1e-3)
    assert 1e-4 < lr_at(100, **kw) < 1e-3
    assert lr_at(300, **kw) == pytest.approx(1e-4) and lr_at(900, **kw) == pytest.approx(1e-4)
    cos = dict(kw, schedule="cosine", total_epochs=10, warmup_epochs=0)
    assert lr_at(0, **cos) == pytest.approx(1e-3) and lr_at(100, **cos) == pytest.approx(1e-4)
    assert lr_at(50, **dict(kw, schedule="constant")) == 1e-3
    with pytest.raises(ValueError, match="schedule must be one of paper, cosine, constant"):
        lr_at(0, **dict(kw, schedule="step"))


def test_schedule_state_round_trip():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.Adam(p, lr=1e-3)
    sched = StepSchedule(opt, schedule="paper", steps_per_epoch=4, max_lr=1e-3)
    for _ in range(7):
        opt.step()
        sched.step()
    opt2 = torch.optim.Adam(p, lr=1e-3)
    sched2 = StepSchedule(opt2, schedule="paper", steps_per_epoch=4, max_lr=1e-3)
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# -- optimizers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_name_builds_and_steps(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    opt = build_optimizer(name, model.parameters(), lr=1e-2)
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    before = model.weight.detach().clone()
    if hasattr(opt, "start_epoch"):
        opt.start_epoch()
    for _ in range(3):
        if name in ("adam", "adamw", "sgd"):
            opt.zero_grad()
        loss = opt.step(closure)
    assert torch.isfinite(loss) and not torch.equal(before, model.weight)
    expected = {"adam": 3, "adamw": 3, "sgd": 3, "sam": 6, "asam": 6, "graphsam": 4, "graphsam-ref": 4}
    if name in expected:
        assert calls == expected[name]


def test_each_optimizer_gets_its_own_rho_unless_one_is_given():
    from graphsam_ext.train.optimizers import DEFAULT_RHO, GRAPHSAM_FAMILY, SAM_FAMILY

    assert set(DEFAULT_RHO) == set(SAM_FAMILY) | set(GRAPHSAM_FAMILY)
    for name, rho in DEFAULT_RHO.items():
        opt = build_optimizer(name, [torch.nn.Parameter(torch.zeros(3))], **TrainConfig().optimizer_kwargs())
        assert opt.param_groups[0]["rho"] == pytest.approx(rho), name
        given = build_optimizer(name, [torch.nn.Parameter(torch.zeros(3))], **TrainConfig(rho=0.123).optimizer_kwargs())
        assert given.param_groups[0]["rho"] == pytest.approx(0.123), name
    with pytest.raises(UserError, match="--rho"):
        TrainConfig(rho=-0.1)


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of: adam, adamw, sgd, sam, asam, sam-k, graphsam, graphsam-ref"):
        build_optimizer("lamb", [torch.nn.Parameter(torch.zeros(1))])


def test_config_validation():
    with pytest.raises(UserError, match="choose one of random, scaffold, balanced-scaffold"):
        TrainConfig(split="cluster")
    assert TrainConfig(split="scaffold_balanced").split == "balanced_scaffold"  # chemprop's spelling
    with pytest.raises(ValueError, match="summing to 1"):
        TrainConfig(split_fractions=(0.8, 0.1, 0.2))
    with pytest.raises(UserError, match="--no-descriptors"):
        TrainConfig(descriptors="False")
    assert TrainConfig(split="balanced-scaffold").split == "balanced_scaffold"
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizers=["adam", "rmsprop"])


# -- the loop ------------------------------------------------------------------------------------------
def _seed_run(cfg, tmp_path, name, optimizer="graphsam"):
    from graphsam_ext.train.experiment import load_data, split_for_seed
    from graphsam_ext.train.loop import SeedRun

    dataset = load_data(cfg)
    data = split_for_seed(cfg, dataset, 0, tmp_path / "splits")
    return SeedRun(cfg, optimizer, 0, data, tmp_path / name, "cpu")


@pytest.mark.parametrize("optimizer", ["graphsam", "adam"])
def test_resume_continues_exactly(tmp_path, cache_dir, optimizer):
    cfg = tiny_config(write_tiny_csv(tmp_path / "tiny.csv"), epochs=4, patience=10)
    straight = _seed_run(cfg, tmp_path, "straight", optimizer)
    full = straight.run()
    first = _seed_run(cfg, tmp_path, "resumed", optimizer).run(stop_after_epochs=2)
    assert not first["finished"] and first["epochs_run"] == 2
    resumed_run = _seed_run(cfg, tmp_path, "resumed", optimizer)
    resumed = resumed_run.run()
    assert resumed["finished"] and resumed["epochs_run"] == 4
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed_run.model.state_dict()[key]), key
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k} for r in h]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])
    assert full["test"] == resumed["test"]
    assert (tmp_path / "resumed" / "best.pt").exists() and (tmp_path / "resumed" / "result.json").exists()


def test_early_stopping_and_model_selection(tmp_path, cache_dir, monkeypatch):
    import graphsam_ext.train.loop as loop

    values = iter([1.0, 0.5, 0.7, 0.6, 0.8, 0.4, 0.3])

    def fake_evaluate(y, p, mask, task_type):
        return {"rmse": next(values), "mae": 0.0}

    cfg = tiny_config(write_tiny_csv(tmp_path / "tiny.csv"), epochs=7, patience=3)
    run = _seed_run(cfg, tmp_path, "es", "adam")
    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    result = run.run()
    # best at epoch 2 (0.5), then 3 epochs without improvement -> stop after epoch 5
    assert result["stopped_early"] and result["epochs_run"] == 5 and result["best_epoch"] == 2
    assert result["val"]["rmse"] == 0.5
    assert result["test"]["rmse"] == 0.4  # evaluated once more, with the selected weights


def test_experiment_writes_results_and_counts_passes(tmp_path, cache_dir):
    from graphsam_ext.train import format_table, run_experiment

    cfg = tiny_config(write_tiny_csv(tmp_path / "tiny.csv", classification=True), target_columns=["toxic"],
                      optimizers=["adam", "sam", "graphsam"], epochs=2, seeds=2, split="scaffold",
                      split_fractions=(0.6, 0.2, 0.2))
    out = run_experiment(cfg, tmp_path / "run")
    steps = out["summary"]["adam"]["steps_per_epoch"]
    assert out["summary"]["adam"]["passes_per_epoch"] == steps
    assert out["summary"]["sam"]["passes_per_epoch"] == 2 * steps
    assert out["summary"]["graphsam"]["passes_per_epoch"] == steps + 1
    assert out["data"]["task_type"] == "classification" and out["metric"] == "roc_auc"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved["results"]["sam"]) == {"0", "1"}
    assert "test_roc_auc_mean" in saved["summary"]["graphsam"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("optimizer,seed,epoch") and len(rows) == 1 + 3 * 2 * 2
    for plot in saved["plots"]:
        assert (tmp_path / "run" / plot).read_bytes()[:4] == b"\x89PNG"
    table = format_table(out["summary"], "classification", "adam")
    assert "graphsam" in table and "±" in table and "passes/epoch" in table
    # every optimizer of a seed started from the same weights and saw the same split
    splits = json.loads((tmp_path / "run" / "splits" / "seed0.json").read_text())
    assert splits["kind"] == "scaffold" and len(splits["train"]) > 0


def test_parallel_jobs_give_the_same_runs_as_one_process(tmp_path, cache_dir):
    """jobs=2 trains the (optimizer, seed) pairs in two processes; every run keeps its own seeded
    streams, so the metrics equal the interleaved one-process runs exactly."""
    from graphsam_ext.train import run_experiment

    cfg = dict(optimizers=["adam", "sam", "graphsam"], epochs=2, seeds=2)
    path = write_tiny_csv(tmp_path / "tiny.csv")
    run_experiment(tiny_config(path, **cfg), tmp_path / "one")
    messages = []
    run_experiment(tiny_config(path, **cfg), tmp_path / "two", jobs=2, log=messages.append)
    assert "training 6 (optimizer, seed) runs, 2 at a time" in messages
    for opt in cfg["optimizers"]:
        for seed in (0, 1):
            a, b = (json.loads((tmp_path / run / opt / f"seed{seed}" / "result.json").read_text())
                    for run in ("one", "two"))
            assert a["finished"] and b["finished"]
            assert (a["val"], a["test"], a["best_epoch"]) == (b["val"], b["test"], b["best_epoch"])
            assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert (tmp_path / "two" / "splits" / "seed1.json").read_text() == \
        (tmp_path / "one" / "splits" / "seed1.json").read_text()
    assert len((tmp_path / "two" / "metrics.csv").read_text().splitlines()) == 1 + 3 * 2 * 2
    with pytest.raises(UserError, match="--jobs"):
        run_experiment(tiny_config(path, **cfg), tmp_path / "bad", jobs=0)


def test_split_without_both_classes_in_validation_is_refused(tmp_path, cache_dir):
    from graphsam_ext.train.experiment import load_data, split_for_seed

    path = tmp_path / "one_class.csv"
    # only the two largest scaffold groups (benzene, cyclohexane) hold negatives: the
    # deterministic scaffold split puts them all into train
    lines = ["smiles,active"] + [f"{s},{0 if s.startswith(('c1ccccc1', 'C1CCCCC1')) else 1}" for s in SMILES]
    path.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(path, smiles_column="smiles", target_columns=["active"], split="scaffold",
                      split_fractions=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="balanced-scaffold"):
        split_for_seed(cfg, load_data(cfg), 0, tmp_path)
