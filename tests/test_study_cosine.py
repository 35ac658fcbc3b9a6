"""graphsam study --cosine: the probe's cosines against hand-computed directions, a run with the probe
bitwise equal to one without, cosine 1 on the exact steps, and the files the command writes."""
import csv
import math

import pytest
import torch

from graphsam_ext.cli import main
from graphsam_ext.optim import SAM, GraphSAM, SAMOne
from graphsam_ext.study.cosine import COLUMNS, DirectionProbe, ProbedRun, read_rows
from graphsam_ext.train.experiment import load_data, split_for_seed
from graphsam_ext.train.loop import SeedRun
from tests.test_study import TINY_FLAGS as STUDY_FLAGS
from tests.test_study import one_thread  # noqa: F401 (a fixture)
from tests.test_train import tiny_config, write_tiny_csv

RHO, BETA = 0.05, 0.9


# -- the probe on a model small enough to follow by hand ---------------------------------------------------
def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    batches = [(torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)) for _ in range(4)]
    return model, batches


def _grad(model, batch, shift=None):
    """The flat gradient of the batch loss at the model's weights (+ shift)."""
    params = list(model.parameters())
    with torch.no_grad():
        theta = [p.clone() for p in params]
        if shift is not None:
            offset = 0
            for p in params:
                p.add_(shift[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
    x, y = batch
    grads = torch.autograd.grad(torch.nn.functional.mse_loss(model(x), y), params)
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
    return torch.cat([g.reshape(-1) for g in grads])


def _unit(v):
    return v / v.norm()


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _train_probed(make_optimizer, model, batches):
    """Steps over ``batches`` with a probe; returns the probe and each step's exact gradient by hand."""
    opt = make_optimizer(model.parameters())
    probe = DirectionProbe(model, opt)
    exact = []
    for batch in batches:
        exact.append(_grad(model, batch))

        def closure(batch=batch):
            loss = torch.nn.functional.mse_loss(model(batch[0]), batch[1])
            loss.backward()
            return loss

        opt.step(closure)
    return probe, exact


def test_graphsam_direction_is_the_ema_of_the_updating_gradients():
    model, batches = _problem()
    reference, _ = _problem()
    reference.load_state_dict(model.state_dict())
    probe, exact = _train_probed(lambda ps: GraphSAM(ps, rho=RHO, beta=BETA, steps_per_epoch=4, lr=1e-2), model,
                                 batches)
    # GraphSAM by hand on the copy: d_0 = g_0 / ||g_0||, then d <- beta d + (1 - beta) w / ||w||
    opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    direction, expected = None, []
    for t, batch in enumerate(batches):
        g = _grad(reference, batch)
        direction = _unit(g) if t == 0 else direction
        expected.append(_cos(direction, g))
        w = _grad(reference, batch, shift=RHO * _unit(direction))
        offset = 0
        for p in reference.parameters():
            p.grad = w[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        opt.step()
        direction = BETA * direction + (1 - BETA) * _unit(w)
    rows = probe.rows
    assert [r["kind"] for r in rows] == ["exact", "approx", "approx", "approx"]
    assert rows[0]["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert [r["cosine"] for r in rows] == pytest.approx(expected, abs=1e-9)
    assert min(expected) < 0.99  # the approximation is not the exact direction here
    # the paper's perturbation is rho d / ||d||: the same direction, and of norm rho
    assert [r["cosine_perturbation"] for r in rows] == pytest.approx(expected, abs=1e-6)
    assert [r["grad_norm"] for r in rows] == pytest.approx([float(g.norm()) for g in exact], rel=1e-12)
    assert [r["rho"] for r in rows] == [RHO] * 4


def test_sam_one_reuses_the_epoch_start_direction():
    model, batches = _problem()
    probe, exact = _train_probed(lambda ps: SAMOne(ps, rho=RHO, steps_per_epoch=2, gamma=0.5, lr=1e-2), model,
                                 batches)
    rows = probe.rows
    assert [r["kind"] for r in rows] == ["exact", "approx", "exact", "approx"]
    assert rows[0]["cosine"] == pytest.approx(1.0, abs=1e-12) and rows[2]["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert rows[1]["cosine"] == pytest.approx(_cos(exact[0], exact[1]), abs=1e-9)
    assert rows[3]["cosine"] == pytest.approx(_cos(exact[2], exact[3]), abs=1e-9)
    assert [r["rho"] for r in rows] == [RHO, RHO, RHO / 2, RHO / 2]


def test_sam_k_is_exact_on_sam_steps_and_reuses_the_last_one_between():
    model, batches = _problem()
    probe, exact = _train_probed(lambda ps: SAM(ps, rho=RHO, sam_every=2, lr=1e-2), model, batches)
    rows = probe.rows
    assert [r["kind"] for r in rows] == ["exact", "approx", "exact", "approx"]
    assert rows[0]["cosine"] == pytest.approx(1.0, abs=1e-12) and rows[2]["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert rows[1]["cosine"] == pytest.approx(_cos(exact[0], exact[1]), abs=1e-9)
    assert rows[3]["cosine"] == pytest.approx(_cos(exact[2], exact[3]), abs=1e-9)
    # plain steps do not perturb; SAM steps perturb along g
    assert math.isnan(rows[1]["cosine_perturbation"]) and rows[2]["cosine_perturbation"] == pytest.approx(1.0, abs=1e-6)


def test_probe_measures_every_nth_step_and_keeps_sam_k_direction_from_unmeasured_steps():
    model, batches = _problem()
    opt = SAM(model.parameters(), rho=RHO, sam_every=3, lr=1e-2)
    probe = DirectionProbe(model, opt, every=2)
    exact = []
    for batch in batches:
        exact.append(_grad(model, batch))
        opt.step(lambda batch=batch: torch.nn.functional.mse_loss(model(batch[0]), batch[1]).backward())
    # steps 0 (SAM) and 2 (plain, re-using step 0's) measured; step 1 is not
    assert [(r["step"], r["kind"]) for r in probe.rows] == [(0, "exact"), (2, "approx")]
    assert probe.rows[1]["cosine"] == pytest.approx(_cos(exact[0], exact[2]), abs=1e-9)
    assert probe.extra_calls == 2


# -- on the training loop: the run is unchanged, and exact steps give cosine 1 ----------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """(cfg, optimizer -> (SeedRun, ProbedRun)) on the tiny CSV, 2 epochs with dropout."""
    root = tmp_path_factory.mktemp("cosine")
    cfg = tiny_config(write_tiny_csv(root / "tiny.csv"), epochs=2, patience=2,
                      optimizers=["graphsam", "graphsam-ref", "sam-one", "sam-k"])
    dataset = load_data(cfg)
    data = split_for_seed(cfg, dataset, 0, root)
    runs = {}
    for opt in cfg.optimizers:
        plain = SeedRun(cfg, opt, 0, data, root / "plain" / opt, "cpu")
        probed = ProbedRun(cfg, opt, 0, data, root / "probed" / opt, "cpu")
        plain.run()
        probed.run()
        runs[opt] = (plain, probed)
    return cfg, runs


@pytest.mark.parametrize("opt", ["graphsam", "graphsam-ref", "sam-one", "sam-k"])
def test_probe_leaves_the_training_run_bitwise_unchanged(tiny_runs, opt):
    _, runs = tiny_runs
    plain, probed = runs[opt]
    assert len(probed.probe.rows) == 2 * plain.steps_per_epoch  # it did measure every step
    for name, a in plain.model.state_dict().items():
        assert torch.equal(a, probed.model.state_dict()[name]), name
    sa, sb = plain.optimizer.state_dict(), probed.optimizer.state_dict()
    for key, state in sa["state"].items():
        for name, value in state.items():
            other = sb["state"][key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (key, name)
    assert sa["sam_family"] == sb["sam_family"]
    assert torch.equal(plain.rng["torch"], probed.rng["torch"])
    for a, b in zip(plain.history, probed.history):
        assert (a["train_loss"], a["passes"], a["val"], a["rho"]) == (b["train_loss"], b["passes"], b["val"], b["rho"])


@pytest.mark.parametrize("opt", ["graphsam", "graphsam-ref", "sam-one", "sam-k"])
def test_cosine_is_one_where_the_direction_is_exact(tiny_runs, opt):
    _, runs = tiny_runs
    rows = runs[opt][1].probe.rows
    exact = [r for r in rows if r["kind"] == "exact"]
    if opt == "sam-k":  # a SAM step every 2 steps, counted across epochs
        assert [r["step"] for r in exact] == [r["step"] for r in rows if r["step"] % 2 == 0]
    else:  # the first step of each epoch takes the exact gradient
        assert [r["step_in_epoch"] for r in exact] == [0, 0]
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-6) for r in exact)
    assert any(r["cosine"] < 0.999 for r in rows if r["kind"] == "approx")


# -- the command ----------------------------------------------------------------------------------------------
TINY_FLAGS = [*STUDY_FLAGS, "--protocols", "random", "--device", "cpu", "--quiet"]


def test_cosine_command_writes_csv_png_summary_and_skips_finished(tmp_path, one_thread, capsys):
    csv_path = write_tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "cos"
    argv = ["study", "--cosine", "--data-path", str(csv_path), "--optimizers", "graphsam", "sam-k",
            "--cosine-every", "2", "--out", str(out), *TINY_FLAGS]
    assert main(argv) == 0
    with open(out / "cosine.csv", newline="") as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == COLUMNS
    rows = read_rows(out / "cosine.csv")
    steps = read_rows(out / "graphsam" / "rows.csv")
    assert {r["optimizer"] for r in rows} == {"graphsam", "sam-k"}
    assert [r["step"] for r in steps] == [0, 2, 4, 6]  # 4 steps per epoch (25 molecules, batch 8), every 2nd
    assert (out / "cosine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| graphsam | epoch 1 |" in (out / "summary.md").read_text()
    finished = (out / "graphsam" / "result.json").stat().st_mtime_ns
    assert main(argv) == 0  # both finished: nothing is trained again
    assert (out / "graphsam" / "result.json").stat().st_mtime_ns == finished
    (out / "cosine.png").unlink()
    assert main(["study", "--cosine", "--report", "--out", str(out)]) == 0
    assert (out / "cosine.png").is_file()
    capsys.readouterr()
    # other settings into the same directory, two datasets, or --cosine-every without --cosine: refused
    assert main([*argv[:-len(TINY_FLAGS)], *TINY_FLAGS, "--rho", "0.1"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["study", "--cosine", "--datasets", "esol", "bbbp", "--out", str(tmp_path / "x")]) == 2
    assert "one value to --datasets" in capsys.readouterr().err
    assert main(["study", "--cosine-every", "2", "--out", str(tmp_path / "y")]) == 2
    assert "--cosine-every applies to --cosine only" in capsys.readouterr().err
