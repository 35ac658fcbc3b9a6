"""The `graphsam` command line on tiny data: every subcommand, bad arguments, the never-overwrite
rule, resume, and a user CSV with non-default column names from training to predictions."""
import csv
import json

import numpy as np
import pytest
import torch

from graphsam_ext.cli import main

SMILES = [
    "CCO", "CCN", "CCC", "CCCl", "CC(=O)O", "CC(C)O", "c1ccccc1", "c1ccccc1O", "c1ccccc1N", "c1ccccc1C",
    "c1ccncc1", "c1ccncc1C", "C1CCCCC1", "C1CCCCC1O", "C1CCNCC1", "C1CCOC1", "c1ccc2ccccc2c1", "c1ccc2[nH]ccc2c1",
    "OC(=O)c1ccccc1", "CC(=O)Nc1ccccc1", "CN1CCCC1", "c1ccsc1", "c1ccoc1", "C1CC1", "C1CC1C", "FC(F)F",
]
TINY = ["--smiles-column", "Structure", "--target-columns", "pIC50_a", "--epochs", "2", "--seeds", "1",
        "--batch-size", "8", "--hidden", "16", "--layers", "1", "--heads", "2", "--edge-hidden", "8",
        "--num-threads", "1", "--quiet"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A CSV whose SMILES column is 'Structure' (not 'smiles'), run from tmp_path, with the
    featurization cache inside tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    rows = ["ID,Structure,pIC50_a,pIC50_b"] + [
        f"m{i},{s},{rng.normal() + len(s) / 8:.3f},{rng.normal():.3f}" for i, s in enumerate(SMILES)
    ]
    (tmp_path / "assay.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _train(*extra):
    return main(["train", "--data", "assay.csv", *TINY, *extra])


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "graphsam-ext" in capsys.readouterr().out


def test_every_subcommand_has_help(capsys):
    for cmd in ("train", "compare", "predict", "bench"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "--device" in capsys.readouterr().out


def test_user_csv_trains_checkpoints_and_predicts(workdir, capsys):
    assert _train("--output-dir", "run1") == 0
    out = capsys.readouterr().out
    assert "test rmse" in out and "results:" in out
    results = json.loads((workdir / "run1" / "results.json").read_text())
    assert results["data"]["task_names"] == ["pIC50_a"]
    assert set(results["results"]["adam"]) == {"0"}
    assert "rmse" in results["results"]["adam"]["0"]["test"]
    assert results["summary"]["adam"]["test_rmse_mean"] is not None
    assert (workdir / "run1" / "adam" / "seed0" / "best.pt").is_file()
    assert (workdir / "run1" / "adam" / "seed0" / "last.pt").is_file()

    (workdir / "new.csv").write_text("name,Structure\na,CCOC\nb,not_a_smiles\nc,c1ccccc1CC\n")
    code = main(["predict", "--checkpoint", "run1/adam/seed0/best.pt", "--data", "new.csv",
                 "--smiles-column", "Structure", "--output", "pred.csv"])
    assert code == 0
    err = capsys.readouterr().err
    assert "1 invalid SMILES" in err and "row 2" in err
    rows = list(csv.DictReader(open(workdir / "pred.csv")))
    assert [r["Structure"] for r in rows] == ["CCOC", "not_a_smiles", "c1ccccc1CC"]
    assert rows[1]["pIC50_a"] == "" and rows[1]["error"]
    assert np.isfinite(float(rows[0]["pIC50_a"])) and rows[0]["error"] == ""
    # a run directory works too (every best.pt averaged), and --output is never overwritten silently
    assert main(["predict", "--checkpoint", "run1", "--data", "new.csv", "--smiles-column", "Structure",
                 "--output", "pred.csv"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", "run1", "--smiles", "CCO", "C1CC", "--quiet"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == "row,smiles,pIC50_a,error" and lines[2].startswith("2,C1CC,,")
    assert "row 2 ('C1CC')" in captured.err


def test_default_output_dir_is_a_new_run_directory(workdir):
    assert _train() == 0
    assert _train() == 0
    runs = sorted(p.name for p in (workdir / "runs").iterdir())
    assert len(runs) == 2 and all("train-assay" in r for r in runs)


def test_never_overwrites_without_flag(workdir, capsys):
    assert _train("--output-dir", "run1") == 0
    stamp = (workdir / "run1" / "results.json").stat().st_mtime_ns
    assert _train("--output-dir", "run1") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (workdir / "run1" / "results.json").stat().st_mtime_ns == stamp
    assert _train("--output-dir", "run1", "--overwrite") == 0
    # --overwrite never deletes a directory that is not a graphsam run
    (workdir / "mine").mkdir()
    (workdir / "mine" / "notes.txt").write_text("keep me")
    assert _train("--output-dir", "mine", "--overwrite") == 2
    assert "refusing" in capsys.readouterr().err
    assert (workdir / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "lamb"], "unknown optimizer 'lamb'; choose one of: adam, adamw"),
        (["--target-columns", "pIC50_c"], "pIC50_b"),
        (["--smiles-column", "smi"], "Structure"),
        (["--hidden", "30", "--heads", "4"], "divisible by heads"),
        (["--split-fractions", "0.5", "0.5", "0.5"], "summing to 1"),
    ],
)
def test_bad_arguments_explain_the_fix(workdir, capsys, args, message):
    assert main(["train", "--data", "assay.csv", *TINY, *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_dataset_and_choices(workdir, capsys):
    assert main(["train", "--dataset", "qm9", "--quiet"]) == 2
    assert "bbbp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--split", "cluster"])
    assert "balanced-scaffold" in capsys.readouterr().err
    assert main(["train", "--data", "missing.csv", "--quiet"]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_resume_matches_an_uninterrupted_run(workdir, capsys):
    assert _train("--output-dir", "straight", "--epochs", "3", "--patience", "10") == 0
    assert _train("--output-dir", "part", "--epochs", "2", "--patience", "10") == 0
    assert main(["train", "--resume", "part", "--epochs", "3", "--quiet", "--num-threads", "1"]) == 0
    a = torch.load(workdir / "straight" / "adam" / "seed0" / "last.pt", weights_only=True)
    b = torch.load(workdir / "part" / "adam" / "seed0" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    ra = json.loads((workdir / "straight" / "results.json").read_text())
    rb = json.loads((workdir / "part" / "results.json").read_text())
    assert ra["results"]["adam"]["0"]["test"] == rb["results"]["adam"]["0"]["test"]
    capsys.readouterr()
    assert main(["train", "--resume", "part", "--lr", "0.1", "--quiet"]) == 2
    assert "--lr" in capsys.readouterr().err


def test_compare_prints_table_and_writes_plots(workdir, capsys):
    code = main(["compare", "--data", "assay.csv", *TINY, "--optimizers", "adam", "graphsam", "sam-k",
                 "--output-dir", "cmp", "--split", "scaffold"])
    assert code == 0
    out = capsys.readouterr().out
    assert "x adam" in out and "passes/epoch" in out and "graphsam" in out and "plots:" in out
    assert (workdir / "cmp" / "metrics.csv").is_file()
    assert list((workdir / "cmp").glob("*.png"))


def test_pair_attention_trains_and_predicts(workdir, capsys):
    assert _train("--output-dir", "pairs", "--attention", "pairs", "--pair-distance", "2") == 0
    ckpt = torch.load(workdir / "pairs" / "adam" / "seed0" / "best.pt", weights_only=True)
    assert ckpt["featurizer"]["pair_distance"] == 2 and ckpt["model_config"]["distance_bins"] == 2
    capsys.readouterr()
    assert main(["predict", "--checkpoint", "pairs", "--smiles", "CCOc1ccccc1", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[1].startswith("1,CCOc1ccccc1,")
    assert _train("--output-dir", "bad", "--pair-distance", "2") == 2
    assert "--attention pairs" in capsys.readouterr().err


def test_predict_refuses_an_incompatible_featurizer(workdir, capsys):
    assert _train("--output-dir", "run1") == 0
    ckpt = torch.load(workdir / "run1" / "adam" / "seed0" / "best.pt", weights_only=True)
    ckpt["featurizer"]["version"] = 999
    torch.save(ckpt, workdir / "old.pt")
    assert main(["predict", "--checkpoint", "old.pt", "--smiles", "CCO", "--quiet"]) == 2
    assert "incompatible featurizer" in capsys.readouterr().err


def test_bench_runs_pytest_on_the_suites(workdir, capsys):
    bench = workdir / "mybench"
    bench.mkdir()
    (bench / "test_trivial.py").write_text("def test_ok(benchmark):\n    benchmark(sum, [1, 2, 3])\n")
    assert main(["bench", "--path", str(bench), "--smoke", "--quiet"]) == 0
    assert main(["bench", "--path", str(workdir / "nowhere"), "--quiet"]) == 2
    assert "benchmarks directory" in capsys.readouterr().err


def _config_actions(command):
    from graphsam_ext.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return sub, [a for a in sub._actions if a.option_strings]


@pytest.mark.parametrize("command", ["train", "compare"])
def test_each_config_field_has_exactly_one_option_with_its_default_in_the_help(command):
    from dataclasses import fields

    from graphsam_ext.train import TrainConfig
    from graphsam_ext.train.config import COMMAND_DEFAULTS

    sub, actions = _config_actions(command)
    by_dest = {}
    for action in actions:
        by_dest.setdefault(action.dest, []).append(action)
    names = [f.name for f in fields(TrainConfig)]
    assert all(len(by_dest.get(name, [])) == 1 for name in names), {n: len(by_dest.get(n, [])) for n in names}
    for name in names:
        default = COMMAND_DEFAULTS[command].get(name, TrainConfig.default(name))
        text = by_dest[name][0].help
        if default is not None:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
            assert f"(default {shown})" in text, (name, text)
        else:
            assert "(default" in text, (name, text)


def test_chemprop_style_command_line_trains(workdir, capsys):
    code = main(["train", "-i", "assay.csv", "-s", "Structure", "--target-columns", "pIC50_a", "-t", "regression",
                 "--split-type", "scaffold_balanced", "--split-sizes", "0.6", "0.2", "0.2", "-o", "cp",
                 "--epochs", "2", "--num-replicates", "2", "--batch-size", "8", "--hidden", "16", "--layers", "1",
                 "--heads", "2", "--edge-hidden", "8", "--num-threads", "1", "--quiet"])
    assert code == 0
    results = json.loads((workdir / "cp" / "results.json").read_text())
    assert results["config"]["split"] == "balanced_scaffold" and results["config"]["split_fractions"] == [0.6, 0.2, 0.2]
    assert results["config"]["seeds"] == 2 and set(results["results"]["adam"]) == {"0", "1"}
    assert results["data"]["task_names"] == ["pIC50_a"] and results["data"]["task_type"] == "regression"


def test_internal_errors_keep_their_traceback(workdir, monkeypatch):
    import graphsam_ext.train as train_pkg

    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not a user mistake")

    monkeypatch.setattr(train_pkg, "run_experiment", broken)
    with pytest.raises(ValueError, match="internal bug"):
        _train("--output-dir", "x")


def test_efficient_sam_baselines_train_from_the_command_line(workdir, capsys):
    code = main(["compare", "--data", "assay.csv", *TINY, "--optimizers", "looksam", "ae-sam", "sam-one",
                 "--looksam-k", "3", "--looksam-alpha", "0.5", "--aesam-c", "0.5", "--output-dir", "eff"])
    assert code == 0
    results = json.loads((workdir / "eff" / "results.json").read_text())
    assert set(results["results"]) == {"looksam", "ae-sam", "sam-one"}
    assert results["config"]["looksam_k"] == 3 and results["config"]["aesam_c"] == 0.5
    # SAM-One: one extra pass per epoch, like GraphSAM; LookSAM: SAM's two passes only every k-th step
    steps = results["results"]["sam-one"]["0"]["steps_per_epoch"]
    assert results["results"]["sam-one"]["0"]["passes_per_epoch"] == steps + 1
