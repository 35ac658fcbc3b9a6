"""`graphsam bench chemprop --chemprop-optimizers`: chemprop contenders trained with our optimizers
(the commands and pieces; chemprop itself runs in tests/test_integrations_chemprop.py)."""
import json
import sys
from pathlib import Path

import pytest

from graphsam_ext.peers import chemprop_bench as cb


def test_optimizer_args_are_key_value_pairs():
    assert cb.parse_optimizer_args("rho=0.05 beta=0.99 lam=2 implementation=fused") == {
        "rho": 0.05, "beta": 0.99, "lam": 2, "implementation": "fused"}
    assert cb.parse_optimizer_args("") == {}
    with pytest.raises(cb.BenchError, match="not key=value"):
        cb.parse_optimizer_args("rho")
    with pytest.raises(cb.BenchError, match="given twice"):
        cb.parse_optimizer_args("rho=1 rho=2")


def test_options_default_to_chemprops_adam_only(tmp_path):
    base = ["--report", "--out", str(tmp_path)]
    assert cb.resolve_options(base).chemprop_optimizers == ["adam"]
    opts = cb.resolve_options(base + ["--chemprop-optimizers", "adam", "graphsam", "sam",
                                      "--chemprop-optimizer-args=rho=0.1"])
    assert opts.chemprop_optimizers == ["adam", "graphsam", "sam"]
    assert opts.chemprop_optimizer_args == {"rho": 0.1}
    with pytest.raises(cb.BenchError, match="lists a value twice"):
        cb.resolve_options(base + ["--chemprop-optimizers", "sam", "sam"])
    with pytest.raises(SystemExit):
        cb.resolve_options(base + ["--chemprop-optimizers", "lbfgs"])


class _Data:
    task_type = "regression"
    task_names = ["y"]
    smiles = ["C", "CC", "CCC"]

    def __len__(self):
        return 3


def test_each_optimizer_is_its_own_chemprop_contender(tmp_path, monkeypatch):
    opts = cb.resolve_options(["--out", str(tmp_path / "bench"), "--datasets", "esol", "--splits", "random",
                               "--seeds", "0", "--epochs", "3", "--optimizers", "adam", "--graphsam", sys.executable,
                               "--chemprop-venv", str(tmp_path / "venv"), "--chemprop-optimizers", "adam", "graphsam",
                               "--chemprop-optimizer-args", "rho=0.02"])
    bench = cb.Bench(opts, log=lambda *a: None)
    commands = []
    split = {"train": [0], "val": [1], "test": [2]}
    monkeypatch.setattr(bench, "dataset", lambda name: _Data())
    monkeypatch.setattr(bench, "our_split_files", lambda dataset, split: [tmp_path / "seed0.json"])
    monkeypatch.setattr(cb, "check_molecule_count", lambda *a: None)
    monkeypatch.setattr(cb, "write_chemprop_csv", lambda data, path: {"smiles_sha256": "x", "task_names": ["y"],
                                                                      "task_type": "regression"})
    monkeypatch.setattr(cb, "convert_splits", lambda *a: [split])

    def run_logged(cmd, log_path, what):
        commands.append(cmd)
        timing = Path(cmd[cmd.index("train") - 1])
        timing.write_text(json.dumps({"optimizer": {"name": "graphsam", "fits": []}} if "--optimizer" in cmd else {}))
        return 1.0

    monkeypatch.setattr(cb, "_run_logged", run_logged)
    monkeypatch.setattr(cb, "read_chemprop_seed", lambda *a: {"test": {"rmse": 1.0}, "chemprop_version": "2.3.1",
                                                              "train_seconds_per_epoch": 1.0, "train_molecules": 1,
                                                              "epochs_run": 3, "num_parameters": 10})
    adam = bench.chemprop_piece("esol", "random")
    ours = bench.chemprop_piece("esol", "random", "graphsam")
    assert adam["contender"] == "chemprop" and "optimizer" not in adam["request"]
    assert ours["contender"] == "chemprop-graphsam"
    assert ours["request"]["optimizer"] == "graphsam" and ours["request"]["optimizer_args"] == {"rho": 0.02}
    assert ours["label"].endswith("(default D-MPNN, graphsam)")
    assert ours["per_seed"]["0"]["optimizer"]["name"] == "graphsam"
    plain, swapped = commands
    assert Path(plain[1]).name == "chemprop_launcher.py" and "--optimizer" not in plain
    assert Path(swapped[1]).name == "chemprop_optimizer_launcher.py"
    assert swapped[swapped.index("--optimizer") + 1] == "graphsam"
    assert json.loads(swapped[swapped.index("--optimizer-args") + 1]) == {"rho": 0.02}
    package_parent = Path(swapped[swapped.index("--graphsam-ext-path") + 1])
    assert (package_parent / "graphsam_ext" / "__init__.py").is_file()
    # the same chemprop flags after the launcher's own
    assert plain[plain.index("train"):] == [a.replace("chemprop-graphsam", "chemprop") for a in
                                            swapped[swapped.index("train"):]]
    assert (tmp_path / "bench" / "chemprop-graphsam" / "esol" / "random" / cb.PIECE_FILE).is_file()
    table = cb.format_table([adam, ours])
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["chemprop 2.3.1 (default D-MPNN)", "chemprop 2.3.1 (default D-MPNN, graphsam)"]


def test_the_launcher_refuses_bad_options(tmp_path):
    import subprocess

    launcher = Path(cb.__file__).with_name("chemprop_optimizer_launcher.py")
    done = subprocess.run([sys.executable, str(launcher), "--optimizer", "sam", "--optimizer-args", "[1]",
                           str(tmp_path / "t.json"), "train"], capture_output=True, text=True)
    assert done.returncode == 2 and "expected a JSON object" in done.stderr
