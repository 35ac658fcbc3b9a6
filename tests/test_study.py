"""graphsam study: cells written as they finish, an interrupted study resuming to the same
results, the report on partial cells, and the paired statistics against hand-computed values."""
import json
import math
import sys
import types

import pytest
import torch

from graphsam_ext.cli import main
from graphsam_ext.errors import UserError
from graphsam_ext.study import (SIGN_FLIP, T_TEST, StopStudy, StudyPlan, aggregate, build_report, cell_path,
                                load_cells, paired_test, run_study, sign_flip_p, t_statistic)
from graphsam_ext.study import grid
from graphsam_ext.study.stats import default_method
from tests.test_train import write_tiny_csv

TINY = dict(smiles_column="mol", target_columns=["solubility", "logp"], epochs=2, batch_size=8, hidden=16, layers=1,
            heads=2, edge_hidden=8, warmup_epochs=1, decay_epochs=2)
TINY_FLAGS = ["--smiles-column", "mol", "--target-columns", "solubility", "logp", "--epochs", "2", "--batch-size", "8",
              "--hidden", "16", "--layers", "1", "--heads", "2", "--edge-hidden", "8", "--warmup-epochs", "1",
              "--decay-epochs", "2"]
OPTIMIZERS, SEEDS = ["adam", "graphsam"], [0, 1]


@pytest.fixture
def one_thread(monkeypatch, tmp_path):
    """The CLI sets one torch thread (process-wide); give the other tests their setting back."""
    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _plan(out, csv):
    return StudyPlan(out=out, datasets=[], data_paths={"tiny": str(csv)}, protocols=["random"], seeds=SEEDS,
                     optimizers=OPTIMIZERS, settings=dict(TINY))


def _cell_files(out):
    return sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*.json"))


def _comparable(cell):
    r = cell["result"]
    return {"test": r["test"], "val": r["val"], "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
            "history": [(h["epoch"], h["train_loss"], h["val"], h["rho"], h["passes"]) for h in r["history"]]}


# -- the paired statistics by hand ------------------------------------------------------------------------
def test_paired_statistics_by_hand():
    # d = 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3
    assert t_statistic([0.1, 0.2, 0.3]) == pytest.approx(2 * math.sqrt(3))
    # all 8 sign patterns of three positive differences: only +++ and --- reach |mean| 0.2
    assert sign_flip_p([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    # |±0.1 ±0.1 ±0.2 ±0.2| >= 0.4 for 6 of the 16 patterns (0.6 once, 0.4 twice, each sign)
    assert sign_flip_p([0.1, -0.1, 0.2, 0.2]) == pytest.approx(6 / 16)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    out = paired_test([0.1, 0.2, 0.3], SIGN_FLIP)
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.2) and out["std"] == pytest.approx(0.1)
    assert out["p"] == pytest.approx(0.25) and out["exact"]
    assert math.isnan(t_statistic([0.5])) and math.isnan(paired_test([0.5], SIGN_FLIP)["p"])
    assert t_statistic([0.1, 0.1]) == math.inf
    with pytest.raises(ValueError, match="method"):
        paired_test([0.1], "wilcoxon")


def test_paired_t_test_by_hand():
    pytest.importorskip("scipy")
    # Student's t with 2 degrees of freedom: two-sided p = 1 - t / sqrt(t^2 + 2)
    t = 2 * math.sqrt(3)
    assert paired_test([0.1, 0.2, 0.3], T_TEST)["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert paired_test([-0.1, -0.2, -0.3], T_TEST)["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))


def test_t_test_is_chosen_where_scipy_is_and_asks_it_for_n_minus_1_degrees_of_freedom(monkeypatch):
    """Without SciPy installed: a stand-in scipy.stats whose t.sf is the closed form for 2 degrees
    of freedom, sf(x) = 1/2 - x / (2 sqrt(x^2 + 2)), and refuses any other."""
    asked = []

    def sf(x, df):
        asked.append(df)
        assert df == 2
        return 0.5 - x / (2 * math.sqrt(x * x + 2))

    stats = types.ModuleType("scipy.stats")
    stats.t = types.SimpleNamespace(sf=sf)
    scipy = types.ModuleType("scipy")
    scipy.stats = stats
    monkeypatch.setitem(sys.modules, "scipy", scipy)
    monkeypatch.setitem(sys.modules, "scipy.stats", stats)
    assert default_method() == T_TEST
    t = 2 * math.sqrt(3)
    out = paired_test([-0.1, -0.2, -0.3])
    assert out["method"] == T_TEST and out["t"] == pytest.approx(-t)
    assert out["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2)) and asked == [2]
    assert paired_test([0.1, 0.1], T_TEST)["p"] == 0.0  # every difference alike: t is infinite


def _synthetic_cell(out, seed, opt, rmse, best_epoch=2, epochs_run=4, rho=None, command=None):
    history = [{"epoch": e, "elapsed_seconds": 1.5 * e, "val": {"rmse": 2.0 - 0.1 * e, "mae": 1.0}, "rho": rho,
                "train_loss": 1.0, "passes": 10} for e in range(1, epochs_run + 1)]
    cell = {"cell": {"dataset": "esol", "protocol": "random", "seed": seed, "optimizer": opt}, "metric": "rmse",
            "task_type": "regression", "higher_is_better": False, "num_molecules": 100, "split_sizes": [80, 10, 10],
            "molecules_per_second": 40.0 if opt == "adam" else 20.0, "molecules_per_cpu_second": 50.0,
            "selected_last_epoch": best_epoch == epochs_run, "cpu_seconds": 3.0,
            "environment": {"torch": "x", "rdkit": "y"}, "command": command,
            "result": {"test": {"rmse": rmse, "mae": 0.5}, "val": {}, "best_epoch": best_epoch, "epochs_run": epochs_run,
                       "train_seconds_per_epoch": 2.0, "train_cpu_seconds_per_epoch": 1.0, "passes_per_epoch": 10.0,
                       "steps_per_epoch": 10, "history": history}}
    path = cell_path(out, "esol", "random", seed, opt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))


def test_report_on_synthetic_cells(tmp_path):
    out = tmp_path / "study"
    for seed, (adam, sam) in enumerate([(1.0, 0.9), (1.2, 1.0), (0.9, 1.0)]):
        _synthetic_cell(out, seed, "adam", adam)
        _synthetic_cell(out, seed, "sam", sam, rho=0.05, best_epoch=4 if seed == 2 else 2)
    _synthetic_cell(out, 3, "sam", 0.1, rho=0.05)  # no adam cell on seed 3: not a pair
    broken = cell_path(out, "esol", "random", 4, "sam")
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    cells, bad = load_cells(out)
    assert len(cells) == 7 and bad == [str(broken)]
    group = aggregate(cells, SIGN_FLIP)[("esol", "random")]
    p = group["paired"]["sam"]
    # sam - adam = -0.1, -0.2, +0.1: mean -1/15, sd sqrt(0.07 / 3), 6 of 8 sign patterns reach |sum| 0.2
    assert p["seeds"] == [0, 1, 2] and p["n"] == 3
    assert p["mean"] == pytest.approx(-0.2 / 3)
    assert p["std"] == pytest.approx(math.sqrt(0.07 / 3))
    assert p["t"] == pytest.approx((-0.2 / 3) / (math.sqrt(0.07 / 3) / math.sqrt(3)))
    assert p["p"] == pytest.approx(0.75)
    # RMSE: lower is better, so a negative difference is a gain, relative to adam's mean over the pairs
    assert p["gain_percent"] == pytest.approx(0.2 / 3 / (3.1 / 3) * 100) and p["better"] is True
    sam = group["optimizers"]["sam"]
    assert sam["test_rmse"]["n"] == 4 and sam["test_rmse"]["mean"] == pytest.approx((0.9 + 1.0 + 1.0 + 0.1) / 4)
    assert [s["last"] for s in sam["selected_epochs"]] == [False, False, True, False]

    payload = build_report(out, SIGN_FLIP)
    text = (out / "report.md").read_text()
    assert "sign-flip permutation test" in text and payload["test"] == SIGN_FLIP
    assert "4/4!" in text and "esol/random/sam/seed2" in text
    assert "| sam | 3 | -0.0667 | 0.1528 | 6.45 % | better | -0.76 | 0.750 |" in text
    assert "| sam | 1 | 1 (0 with p < 0.05) | 0 (0 with p < 0.05) |" in text
    assert "| esol, random | rmse (lower is better) | 1.033 ± 0.153 | 0.750 ± 0.436 |" in text
    assert "GROVER" in text and "0.619 ± 0.089" in text and "different backbones" in text
    assert str(broken) in text and payload["cpu_seconds"]["finished_cells"] == pytest.approx(21.0)
    assert "## Throughput" not in text  # no GraphSAM cell: nothing to set beside the paper's ratios
    plots = payload["plots"]["esol/random"]
    for rel in plots.values():
        assert (out / rel).is_file() and rel in text
    assert any("rho" in title for title in plots)
    # the rho each optimizer started from is read from the cells (adam records none)
    assert payload["rho_used"] == {"sam": [0.05]} and "rho at the first epoch sam 0.05" in text


def test_throughput_ratios_only_between_cells_trained_side_by_side(tmp_path):
    """Adam's cells made by another command (another invocation, other load) get no throughput
    ratio and a note; GraphSAM's and SAM's, trained by one command, do."""
    out = tmp_path / "study"
    grid_command, search_command = ["graphsam", "study", "--out", "a"], ["graphsam", "study", "--out", "b"]
    for seed in range(3):
        _synthetic_cell(out, seed, "adam", 1.0, command=search_command)
        _synthetic_cell(out, seed, "sam", 0.9, command=grid_command)
        _synthetic_cell(out, seed, "graphsam", 0.95, command=grid_command)
    build_report(out, SIGN_FLIP)
    text = (out / "report.md").read_text()
    assert "| esol, random | 20 | – (not side by side) | 1.00x |" in text
    assert "adam's cells were trained by another command than those of sam, graphsam" in text

    for seed in range(3):
        _synthetic_cell(out, seed, "adam", 1.0, command=grid_command)
    build_report(out, SIGN_FLIP)
    text = (out / "report.md").read_text()
    assert "| esol, random | 20 | 0.50x | 1.00x |" in text and "another command" not in text


def test_overview_marks_only_the_differences_with_a_small_p(tmp_path):
    """Six seeds where sam is better every time: the exact sign-flip p is 2/64, so the overview marks
    sam (+); graphsam, better on three seeds and worse on three, stays unmarked."""
    from graphsam_ext.study.report import _overview

    out = tmp_path / "study"
    for seed in range(6):
        _synthetic_cell(out, seed, "adam", 1.0 + 0.01 * seed)
        _synthetic_cell(out, seed, "sam", 0.9 + 0.01 * seed)
        _synthetic_cell(out, seed, "graphsam", 1.0 + 0.01 * seed + (0.05 if seed % 2 else -0.05))
    cells, _ = load_cells(out)
    text = "\n".join(_overview(aggregate(cells, SIGN_FLIP)))
    row = next(line for line in text.splitlines() if line.startswith("| esol, random"))
    adam, sam, graphsam = (c.strip() for c in row.strip("|").split("|")[2:])
    assert sam.endswith("(+)") and not adam.endswith(")") and not graphsam.endswith(")")


def test_a_study_that_predates_a_setting_keeps_the_value_it_ran_with(tmp_path):
    """A study.json written before local_mpnn existed ran without the bond block, whatever today's
    default: resuming it must not switch the block on, and asking for it is refused."""
    settings = grid.normalized_settings({})
    del settings["local_mpnn"]
    (tmp_path / "study.json").write_text(json.dumps({"settings": settings, "data_paths": {}}))
    stored = grid.load_study_file(tmp_path)["settings"]
    assert stored["local_mpnn"] is False
    assert grid.settings_given_from(stored, {})["local_mpnn"] is False
    with pytest.raises(UserError, match="local_mpnn"):
        grid.settings_given_from(stored, {"local_mpnn": True})


# -- the grid on a tiny CSV ---------------------------------------------------------------------------------
def test_study_resumes_to_the_uninterrupted_results(tmp_path, one_thread, capsys):
    csv = write_tiny_csv(tmp_path / "tiny.csv")
    whole, parts = tmp_path / "whole", tmp_path / "parts"

    # uninterrupted, through the command line (training options passed through)
    rc = main(["study", "--data-path", str(csv), "--protocols", "random", "--seeds", "0", "1", "--optimizers",
               *OPTIMIZERS, "--out", str(whole), "--quiet", *TINY_FLAGS])
    assert rc == 0
    assert len(_cell_files(whole)) == 4 and (whole / "report.md").is_file()
    settings = json.loads((whole / "study.json").read_text())["settings"]
    assert settings["hidden"] == 16 and settings["epochs"] == 2 and settings["patience"] == grid.STUDY_PATIENCE

    # interrupted after its first cell
    def stop(path):
        raise StopStudy

    first = run_study(_plan(parts, csv), on_cell=stop)
    assert [p.relative_to(parts).as_posix() for p in first["finished"]] == ["cells/tiny/random/seed0/adam.json"]
    assert _cell_files(parts) == ["cells/tiny/random/seed0/adam.json"]
    # graphsam had trained one of its epochs and keeps it
    assert (grid.run_dir_of(parts, "tiny", "random", 0) / "graphsam" / "seed0" / "last.pt").is_file()
    kept = (parts / "cells/tiny/random/seed0/adam.json").read_text()

    # the report of the partial study
    assert main(["study", "--report", "--out", str(parts)]) == 0
    text = (parts / "report.md").read_text()
    assert "Finished cells: 1 (1 of the 4 requested so far" in text and "| adam | 1 |" in text

    # resumed: the finished cell is skipped, the others are written one at a time as they finish
    seen = []
    second = run_study(_plan(parts, csv), on_cell=lambda path: seen.append((path.name, len(_cell_files(parts)))))
    assert [p.relative_to(parts).as_posix() for p in second["skipped"]] == ["cells/tiny/random/seed0/adam.json"]
    assert seen == [("graphsam.json", 2), ("adam.json", 3), ("graphsam.json", 4)]
    assert (parts / "cells/tiny/random/seed0/adam.json").read_text() == kept
    assert _cell_files(parts) == _cell_files(whole)
    for rel in _cell_files(whole):
        a, b = json.loads((whole / rel).read_text()), json.loads((parts / rel).read_text())
        assert _comparable(a) == _comparable(b), rel
        assert b["cpu_seconds"] > 0 and b["split_sizes"] == a["split_sizes"]
    # every optimizer of a seed trained on the seed's one split, and the seeds' random splits differ
    splits = [json.loads((grid.run_dir_of(parts, "tiny", "random", s) / "splits" / f"seed{s}.json").read_text())
              for s in SEEDS]
    assert splits[0]["train"] != splits[1]["train"]
    invocations = [json.loads(line) for line in (parts / "invocations.jsonl").read_text().splitlines()]
    assert [e["event"] for e in invocations] == ["start", "end", "start", "end"]
    assert [e["status"] for e in invocations[1::2]] == ["stopped", "complete"]
    assert [e["cells_finished"] for e in invocations[1::2]] == [1, 3]
    assert len(grid.requested_cells(parts)) == 4

    # a later invocation reuses the stored settings and trains nothing new
    capsys.readouterr()
    assert main(["study", "--data-path", str(csv), "--protocols", "random", "--seeds", "0", "1", "--optimizers",
                 *OPTIMIZERS, "--out", str(whole)]) == 0
    assert "0 cell(s) trained, 4 already finished" in capsys.readouterr().out
    # but refuses settings that differ from the stored ones
    assert main(["study", "--data-path", str(csv), "--out", str(whole), "--hidden", "32", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hidden: stored 16, asked 32" in err and "another --out" in err


def test_a_terminated_invocation_records_its_end_and_resumes(tmp_path):
    """``kill`` (SIGTERM) ends a grid invocation as Ctrl-C does: exit status 130, an end record
    with status "interrupted", the epochs trained so far kept for the next invocation."""
    import os
    import signal
    import subprocess
    import time

    csv = write_tiny_csv(tmp_path / "tiny.csv")
    out = tmp_path / "study"
    env = {**os.environ, "GRAPHSAM_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "graphsam_ext.cli", "study", "--data-path", str(csv), "--protocols",
                             "random", "--seeds", "0", "--optimizers", "adam", "--out", str(out), "--quiet",
                             "--num-threads", "1", *TINY_FLAGS, "--epochs", "400", "--patience", "400"],
                            env=env, stderr=subprocess.PIPE, text=True)
    last = grid.run_dir_of(out, "tiny", "random", 0) / "adam" / "seed0" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last.is_file(), "the invocation trained no epoch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; finished cells are kept" in err
    events = [json.loads(line) for line in (out / "invocations.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "end"] and events[1]["status"] == "interrupted"
    assert not _cell_files(out) and last.is_file()
    assert main(["study", "--report", "--out", str(out)]) == 0
    assert "ended without a record" not in (out / "report.md").read_text()


def test_the_report_counts_invocations_that_left_no_end_record(tmp_path):
    out = tmp_path / "study"
    _synthetic_cell(out, 0, "adam", 1.0)
    start = {"event": "start", "started": "2026-12-01 10:00:00", "pid": 7, "grid": None}
    (out / "invocations.jsonl").write_text(json.dumps(start) + "\n")
    payload = build_report(out)
    assert payload["invocations_without_end"] == 1
    assert "1 more invocation(s) ended without a record" in (out / "report.md").read_text()


def test_bad_input_gets_a_clear_error(tmp_path, capsys, monkeypatch):
    csv = write_tiny_csv(tmp_path / "tiny.csv")
    with pytest.raises(UserError, match="--optimizers: unknown optimizer 'adamax'"):
        StudyPlan(out=tmp_path / "s", optimizers=["adamax"])
    with pytest.raises(UserError, match="--protocols: unknown protocol 'cv'"):
        StudyPlan(out=tmp_path / "s", protocols=["cv"])
    with pytest.raises(UserError, match="--datasets: unknown dataset 'qm9'"):
        StudyPlan(out=tmp_path / "s", datasets=["qm9"])
    with pytest.raises(UserError, match="--data-path: .*missing.csv does not exist"):
        StudyPlan(out=tmp_path / "s", datasets=[], data_paths={"missing": str(tmp_path / "missing.csv")})
    with pytest.raises(UserError, match="would share the cells"):
        StudyPlan(out=tmp_path / "s", datasets=["esol"], data_paths={"esol": str(csv)})
    # an optimizer this build lacks is left out of the default grid and named when asked for
    monkeypatch.setattr(grid, "OPTIMIZER_NAMES", tuple(n for n in grid.OPTIMIZER_NAMES if n != "looksam"))
    assert "looksam" not in grid.available_optimizers() and "graphsam" in grid.available_optimizers()
    with pytest.raises(UserError, match="unknown optimizer 'looksam'.*not in this build"):
        StudyPlan(out=tmp_path / "s", optimizers=["looksam"])
    monkeypatch.undo()

    assert main(["study", "--report", "--out", str(tmp_path / "s"), "--hidden", "16"]) == 2
    assert "--report aggregates the cells already in --out and trains nothing; drop --hidden" in capsys.readouterr().err
    assert main(["study", "--report", "--out", str(tmp_path / "none")]) == 2
    assert "no such study directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "--seeds", "-1"])
    assert "--seeds: a seed is a non-negative integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no abbreviation of --datasets to TrainConfig's --dataset
        main(["study", "--dataset", "esol"])


def test_study_options_are_the_training_options_but_the_grid(capsys):
    from dataclasses import fields

    from graphsam_ext.cli import build_parser
    from graphsam_ext.cli.study import GRID_FIELDS
    from graphsam_ext.train import TrainConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["study"]
    by_dest = {}
    for action in sub._actions:
        if action.option_strings:
            by_dest.setdefault(action.dest, []).append(action)
    for f in fields(TrainConfig):
        if f.name not in GRID_FIELDS:
            assert len(by_dest.get(f.name, [])) == 1, f.name
    for own in ("datasets", "study_data_paths", "optimizers", "seeds", "protocols", "epochs", "patience", "out",
                "report"):
        assert len(by_dest[own]) == 1, own
    flags = {flag for action in sub._actions for flag in action.option_strings}
    # the grid's fields come only through the study's own options; a run directory is --out
    for flag in ("--dataset", "--split", "--split-type", "--first-seed", "--num-replicates", "--optimizer", "-i",
                 "--data", "-o", "--output-dir", "--resume", "--overwrite"):
        assert flag not in flags, flag
    assert by_dest["seeds"][0].nargs == "+" and "first_seed" not in by_dest
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "--rho X" in capsys.readouterr().out
