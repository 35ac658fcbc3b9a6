"""The chemprop side-by-side bench without chemprop: split conversion over our kept molecules,
scoring of a prediction file, aggregation and tables, caching, and the errors on bad input."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from graphsam_ext.peers import chemprop_bench as cb

pytest.importorskip("rdkit.Chem")
from graphsam_ext.data import load_dataset, split_indices  # noqa: E402  (after the importorskip above)

ESOL_TARGET = "measured log solubility in mols per litre"
VALID = [
    "CCO", "CCN", "CCC", "c1ccccc1", "c1ccccc1O", "c1ccccc1N", "c1ccccc1C", "C1CCCCC1", "C1CCCCC1O", "C1CCNCC1",
    "c1ccncc1", "c1ccncc1C", "CC(=O)O", "CC(=O)N", "CCOC(=O)C", "c1ccc2ccccc2c1", "c1ccc2ccccc2c1O", "C1CCOC1",
    "C1CCOC1C", "CCCCCC", "CC(C)C", "c1cc[nH]c1", "c1ccsc1", "c1ccoc1", "OCC(O)CO", "NCCN", "CC#N", "C=CC=C",
    "c1ccc(cc1)c1ccccc1", "O=C1CCCCC1", " CCCl ", "ClC(Cl)Cl",
]
INVALID = ["C1CC", "not_a_smiles", "c1ccccc1X", "N(C)(C)(C)(C)C"]


def _write_source_csv(path, with_missing=True):
    """A two-task classification CSV with invalid SMILES spread between valid ones; returns the
    valid rows as (stripped SMILES, labels) in file order."""
    rows, valid = [], []
    invalid = iter(INVALID)
    for i, smiles in enumerate(VALID):
        a = str(i % 2)
        b = "" if (with_missing and i % 5 == 0) else str((i // 2) % 2)
        rows.append([smiles, a, b])
        valid.append((smiles.strip(), a, b))
        if i % 8 == 3:
            rows.append([next(invalid), "1", "0"])
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["smiles", "task_a", "task_b"])
        w.writerows(rows)
    return valid


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _save_our_split(run_dir, seed, split, kind="balanced_scaffold"):
    path = run_dir / "splits" / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    train, val, test = ([int(i) for i in part] for part in split)
    path.write_text(json.dumps({"kind": kind, "seed": seed, "train": train, "val": val, "test": test}))
    return path


@pytest.fixture()
def small(tmp_path):
    source = tmp_path / "source.csv"
    valid = _write_source_csv(source)
    dataset = load_dataset(path=source, cache_dir=False)
    return dataset, valid


def test_dataset_drops_the_invalid_smiles(small):
    dataset, valid = small
    assert dataset.summary["skipped"] == len(INVALID)
    assert dataset.smiles == [s for s, _, _ in valid]


@pytest.mark.parametrize("kind", ["balanced_scaffold", "random"])
def test_converted_splits_select_our_molecules_in_each_part(tmp_path, small, kind):
    dataset, valid = small
    run_dir = tmp_path / "run"
    files = [_save_our_split(run_dir, seed, split_indices(dataset, kind=kind, seed=seed), kind) for seed in (0, 1)]
    meta = cb.write_chemprop_csv(dataset, tmp_path / "data.csv")
    replicates = cb.convert_splits(files, meta["num_molecules"], tmp_path / "data.csv")
    cb.write_splits_file(replicates, tmp_path / "splits.json")

    chemprop_rows = _read_csv(tmp_path / "data.csv")
    # chemprop's input holds exactly the valid molecules of the source file, in its order
    assert [r["smiles"] for r in chemprop_rows] == [s for s, _, _ in valid]
    assert [(r["task_a"], r["task_b"]) for r in chemprop_rows] == [(a, b) for _, a, b in valid]
    assert any(r["task_b"] == "" for r in chemprop_rows)

    chemprop_splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(chemprop_splits) == 2
    for f, entry in zip(files, chemprop_splits):
        ours = json.loads(f.read_text())
        assert sorted(entry) == ["test", "train", "val"]
        for part in ("train", "val", "test"):
            selected = [chemprop_rows[i]["smiles"] for i in entry[part]]
            assert selected == [dataset.smiles[i] for i in ours[part]]
        assert sorted(entry["train"] + entry["val"] + entry["test"]) == list(range(len(dataset)))


def test_regression_targets_round_trip_and_blank_cells(tmp_path):
    source = tmp_path / "reg.csv"
    source.write_text("smiles,logS,other\nCCO,-0.77,1.5\nC1CC,1,2\nc1ccccc1,-3.3,\nCCN,2.125e-3,4\n")
    dataset = load_dataset(path=source, cache_dir=False)
    cb.write_chemprop_csv(dataset, tmp_path / "data.csv")
    rows = _read_csv(tmp_path / "data.csv")
    assert [r["smiles"] for r in rows] == ["CCO", "c1ccccc1", "CCN"]
    assert [float(r["logS"]) for r in rows] == pytest.approx([-0.77, -3.3, 2.125e-3], rel=1e-6)
    assert [r["other"] for r in rows] == ["1.5", "", "4.0"]


def test_missing_split_file_names_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "run" / "splits" / "seed3.json"
    with pytest.raises(cb.BenchError) as err:
        cb.convert_splits([missing], 10)
    assert str(missing) in str(err.value) and "graphsam train" in str(err.value)


def test_split_of_other_molecules_is_refused(tmp_path, small):
    dataset, _ = small
    path = _save_our_split(tmp_path / "run", 0, ([0, 1, 2], [3], [len(dataset) + 2]))
    with pytest.raises(cb.BenchError) as err:
        cb.convert_splits([path], len(dataset), tmp_path / "data.csv")
    msg = str(err.value)
    assert str(path) in msg and str(len(dataset) + 2) in msg and "delete" in msg
    overlap = _save_our_split(tmp_path / "run2", 0, ([0, 1, 2], [2], [4]))
    with pytest.raises(cb.BenchError, match="appears twice"):
        cb.convert_splits([overlap], len(dataset))


def test_mismatched_molecule_count_names_results_json(tmp_path):
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"data": {"num_molecules": 30}}))
    cb.check_molecule_count(results, 30)
    with pytest.raises(cb.BenchError) as err:
        cb.check_molecule_count(results, 28)
    msg = str(err.value)
    assert str(results) in msg and "30" in msg and "28" in msg and "delete" in msg
    with pytest.raises(cb.BenchError, match="not found"):
        cb.check_molecule_count(tmp_path / "nowhere" / "results.json", 28)


def _write_predictions(path, dataset, indices, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["smiles", *dataset.task_names])
        for i, v in zip(indices, values):
            w.writerow([dataset.smiles[i], *v])


def test_predictions_are_scored_with_our_metric_on_our_test_molecules(tmp_path, small):
    dataset, _ = small
    test = [3, 5, 8, 10, 13, 20]
    y = dataset.y.numpy()
    perfect = [[0.9 if y[i, t] > 0.5 else 0.1 for t in range(2)] for i in test]
    path = tmp_path / "model_0" / "test_predictions.csv"
    _write_predictions(path, dataset, test, perfect)
    preds = cb.read_predictions(path, dataset, test)
    assert cb.score(dataset, test, preds)["roc_auc"] == pytest.approx(1.0)
    inverted = [[1 - p for p in row] for row in perfect]
    _write_predictions(path, dataset, test, inverted)
    assert cb.score(dataset, test, cb.read_predictions(path, dataset, test))["roc_auc"] == pytest.approx(0.0)

    with pytest.raises(cb.BenchError, match="row 2"):
        cb.read_predictions(path, dataset, [test[1], test[0], *test[2:]])
    with pytest.raises(cb.BenchError, match="5 predictions for 6"):
        _write_predictions(path, dataset, test[:5], perfect[:5])
        cb.read_predictions(path, dataset, test)


def _piece(contender, label, dataset, split, metric, values, seconds, n_train=100, params=1000):
    return {"contender": contender, "label": label, "dataset": dataset, "split": split, "metric": metric,
            "task_type": "regression" if metric == "rmse" else "classification", "epochs": 30, "torch_threads": 2,
            "per_seed": {str(k): {"test": {metric: v}, "train_seconds_per_epoch": s, "train_molecules": n_train,
                                  "molecules_per_second": n_train / s, "epochs_run": 30, "num_parameters": params}
                         for k, (v, s) in enumerate(zip(values, seconds))}}


def _store(out, piece):
    path = out / piece["contender"] / piece["dataset"] / piece["split"] / cb.PIECE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(piece))


def test_summary_and_tables_from_result_files(tmp_path):
    out = tmp_path / "bench"
    _store(out, _piece("ours-adam", "ours, adam", "esol", "balanced-scaffold", "rmse", [1.0, 1.2, 1.4], [2.0, 2.0, 2.0]))
    _store(out, _piece("chemprop", "chemprop 2.3.1 (default D-MPNN)", "esol", "balanced-scaffold", "rmse",
                       [0.9, 0.9, 0.9], [0.5, 1.0, 1.5], params=318_000))
    _store(out, _piece("ours-adam", "ours, adam", "bbbp", "random", "roc_auc", [0.8], [4.0]))
    pieces = cb.load_pieces(out)
    assert len(pieces) == 3

    s = cb.summarize_piece(next(p for p in pieces if p["contender"] == "ours-adam" and p["dataset"] == "esol"))
    assert s["mean"] == pytest.approx(1.2) and s["std"] == pytest.approx(0.2)
    assert s["molecules_per_second"] == pytest.approx(50.0)

    text = cb.format_report(pieces)
    # datasets in the bench's order (bbbp before esol), chemprop last within a table
    assert text.index("## bbbp, random") < text.index("## esol, balanced-scaffold")
    esol = text[text.index("## esol"):]
    assert "| ours, adam | 1.200 ± 0.200 | 1.000, 1.200, 1.400 |  | 2.00 | 50 | 1,000 | 30.0 | 3 |" in esol
    assert "| chemprop 2.3.1 (default D-MPNN) | 0.900 ± 0.000 | 0.900, 0.900, 0.900 |  | 1.00 | 100 |" in esol
    assert esol.index("ours, adam") < esol.index("chemprop 2.3.1")
    assert "RMSE (lower is better)" in esol
    bbbp = text[text.index("## bbbp"):text.index("## esol")]
    assert "| ours, adam | 0.800 | 0.800 |" in bbbp and "ROC-AUC (higher is better)" in bbbp

    assert cb.main(["--report", "--out", str(out)]) == 0
    assert (out / "bench.md").read_text() == text
    summary = json.loads((out / "bench.json").read_text())["summary"]
    assert {(e["contender"], e["dataset"]) for e in summary} == {("ours-adam", "esol"), ("chemprop", "esol"),
                                                                 ("ours-adam", "bbbp")}
    pytest.importorskip("matplotlib")
    assert (out / "bench.png").stat().st_size > 1000


def test_summary_over_datasets_counts_where_ours_is_at_least_chemprop():
    """ESOL (RMSE, lower is better): ours + adam 1.0 beats chemprop's 1.1, graphsam 1.2 does not;
    BBBP (ROC-AUC): adam 0.8 loses to 0.85, graphsam 0.9 wins. Throughput: 50 / 100 and 50 / 25."""
    pieces = [
        _piece("ours-adam", "ours, adam", "esol", "random", "rmse", [1.0, 1.0], [2.0, 2.0]),
        _piece("ours-graphsam", "ours, graphsam", "esol", "random", "rmse", [1.2, 1.2], [2.0, 2.0]),
        _piece("chemprop", "chemprop", "esol", "random", "rmse", [1.1, 1.1], [1.0, 1.0]),
        _piece("ours-adam", "ours, adam", "bbbp", "random", "roc_auc", [0.8, 0.8], [2.0, 2.0]),
        _piece("ours-graphsam", "ours, graphsam", "bbbp", "random", "roc_auc", [0.9, 0.9], [2.0, 2.0]),
        _piece("chemprop", "chemprop", "bbbp", "random", "roc_auc", [0.85, 0.85], [4.0, 4.0]),
    ]
    text = "\n".join(cb.format_summary(pieces))
    assert "| bbbp | roc_auc | 0.800 ± 0.000 | 0.900 ± 0.000 | 0.850 ± 0.000 | 50 / 25 = 2.0x |" in text
    assert "| esol | rmse | 1.000 ± 0.000 | 1.200 ± 0.000 | 1.100 ± 0.000 | 50 / 100 = 0.5x |" in text
    assert "- ours + adam: at least chemprop's mean test metric on 1 of 2 datasets." in text
    assert "- ours + graphsam: at least chemprop's mean test metric on 1 of 2 datasets." in text
    assert "- ours + adam: at least chemprop's training molecules/s on 1 of 2 datasets." in text
    assert text.index("| bbbp") < text.index("| esol") and text in cb.format_report(pieces)


def test_paired_differences_are_taken_against_each_side_s_adam():
    """chemprop with our optimizer is paired with chemprop's own Adam, our GraphSAM with our Adam,
    seed by seed; a contender whose Adam is missing says so."""
    ours = _piece("ours-adam", "ours, adam", "esol", "random", "rmse", [1.0, 1.2, 1.4], [2.0] * 3)
    ours_gs = _piece("ours-graphsam", "ours, graphsam", "esol", "random", "rmse", [0.9, 1.3, 1.2], [2.0] * 3)
    cp = _piece("chemprop", "chemprop", "esol", "random", "rmse", [0.8, 0.9, 1.0], [1.0] * 3)
    cp_sam = _piece("chemprop-sam", "chemprop, sam", "esol", "random", "rmse", [0.7, 0.95, 0.9], [2.0] * 3)
    table = cb.format_table([ours, ours_gs, cp, cp_sam])
    row = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines()[2:]}
    assert row["ours, graphsam"][3].startswith("-0.067 (-0.100, +0.100, -0.200; ")
    assert row["chemprop, sam"][3].startswith("-0.050 (-0.100, +0.050, -0.100; ")
    assert row["ours, adam"][3] == "" and row["chemprop"][3] == ""
    assert " p = " in row["chemprop, sam"][3]
    alone = cb.format_table([cp_sam])
    assert alone.splitlines()[2].split(" | ")[3] == "n/a"


def test_report_without_results_and_bad_options_are_errors(tmp_path, capsys):
    assert cb.main(["--report", "--out", str(tmp_path / "empty")]) == 2
    assert "run the bench without --report first" in capsys.readouterr().err
    assert cb.main(["--seeds", "0", "2", "--out", str(tmp_path)]) == 2
    assert "--seeds must be consecutive" in capsys.readouterr().err
    assert cb.main(["--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert cb.main(["--graphsam-args=--hidden 64 --epochs=5", "--out", str(tmp_path)]) == 2
    assert "--graphsam-args: --epochs=5 is set by the bench" in capsys.readouterr().err
    assert cb.main(["--chemprop-args=-o elsewhere", "--out", str(tmp_path)]) == 2
    assert "--chemprop-args: -o is set by the bench" in capsys.readouterr().err


def test_read_ours_from_a_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "adam" / "seed0").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"data": {"task_type": "regression", "num_molecules": 50},
                                                  "environment": {"num_threads": 2}}))
    _save_our_split(run, 0, (list(range(40)), list(range(40, 45)), list(range(45, 50))))
    (run / "adam" / "seed0" / "result.json").write_text(json.dumps(
        {"finished": True, "test": {"rmse": 0.7, "mae": 0.5}, "train_seconds_per_epoch": 0.5, "epochs_run": 12,
         "best_epoch": 9, "num_parameters": 1234}))
    res = cb.read_ours(run, "adam", [0])
    entry = res["per_seed"]["0"]
    assert entry["test"]["rmse"] == 0.7 and entry["train_molecules"] == 40
    assert entry["molecules_per_second"] == pytest.approx(80.0)
    with pytest.raises(cb.BenchError) as err:
        cb.read_ours(run, "adam", [0, 1])
    assert str(run / "adam" / "seed1" / "result.json") in str(err.value)


def test_a_piece_cached_under_other_defaults_is_not_reused(tmp_path, monkeypatch):
    """A cached piece records the digest of `graphsam train`'s defaults; after a default changes
    (here the model's width) the same request must not return the old piece."""
    from graphsam_ext.train import config

    request = {"dataset": "esol", "graphsam_args": "", "graphsam_defaults": cb.our_defaults_digest()}
    path = tmp_path / "piece.json"
    path.write_text(json.dumps({"request": request}))
    assert cb._cached_piece(path, dict(request)) == {"request": request}
    hidden = next(f for f in config.fields(config.TrainConfig) if f.name == "hidden")
    monkeypatch.setattr(hidden, "default", hidden.default + 1)
    changed = {**request, "graphsam_defaults": cb.our_defaults_digest()}
    assert changed["graphsam_defaults"] != request["graphsam_defaults"]
    with pytest.raises(cb.BenchError, match="defaults of `graphsam train` changed"):
        cb._cached_piece(path, changed)


FAKE_CHEMPROP = textwrap.dedent('''
    """Stands in for chemprop's launcher: writes what chemprop 2.3.1 writes (test_predictions.csv)
    and the launcher's timing.json; predicts the mean training target."""
    import csv, json, os, sys
    from pathlib import Path

    args = sys.argv[2:]
    timing, args = args[0], args[1:]
    def flag(name):
        return args[args.index(name) + 1]
    rows = list(csv.DictReader(open(flag("--data-path"))))
    split = json.load(open(flag("--splits-file")))
    assert len(split) == 1
    split = split[0]
    target = args[args.index("--target-columns") + 1]
    mean = sum(float(rows[i][target]) for i in split["train"]) / len(split["train"])
    out = Path(flag("-o")) / "model_0"
    out.mkdir(parents=True)
    with open(out / "test_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["smiles", target])
        for i in split["test"]:
            w.writerow([rows[i]["smiles"], mean])
    y = [float(rows[i][target]) for i in split["test"]]
    print("2026-01-01T00:00:00 - INFO:chemprop.cli.train - test/mse: %r" % (sum((v - mean) ** 2 for v in y) / len(y)))
    epochs = int(flag("--epochs"))
    json.dump({"chemprop": "0.0-fake", "torch_threads": 1, "wall_seconds": 1.0,
               "fits": [{"num_parameters": 7, "train_samples": len(split["train"]),
                         "epochs": [{"epoch": e, "train_seconds": 0.25, "epoch_seconds": 0.3} for e in range(epochs)]}]},
              open(timing, "w"))
    with open(os.environ["FAKE_CHEMPROP_CALLS"], "a") as fh:
        fh.write(flag("--pytorch-seed") + "\\n")
''')


def test_bench_runs_both_then_resumes_from_its_cache(tmp_path, monkeypatch, capsys):
    """The whole bench with the real `graphsam train` (1 epoch on a tiny esol.csv) and a stand-in
    for chemprop: chemprop gets our test molecules; a second run starts no process."""
    graphsam = os.path.join(os.path.dirname(sys.executable), "graphsam")
    if not os.path.isfile(graphsam):
        pytest.skip("the graphsam command is not installed beside this Python")
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "esol.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Compound ID", "smiles", ESOL_TARGET])
        for i, s in enumerate(VALID + INVALID[:2]):
            w.writerow([f"m{i}", s, f"{-0.1 * i:.2f}"])
    venv = tmp_path / "venv-chemprop"
    (venv / "bin").mkdir(parents=True)
    (venv / "fake.py").write_text(FAKE_CHEMPROP)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{venv / "fake.py"}" "$@"\n')
    (venv / "bin" / "chemprop").write_text("#!/bin/sh\nexit 1\n")
    for f in ("python", "chemprop"):
        (venv / "bin" / f).chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    monkeypatch.setenv("FAKE_CHEMPROP_CALLS", str(calls))
    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    argv = ["--datasets", "esol", "--splits", "random", "--seeds", "0", "1", "--epochs", "1", "--optimizers", "adam",
            "--out", str(out), "--data-dir", str(data), "--chemprop-venv", str(venv), "--graphsam", graphsam]
    assert cb.main(argv) == 0
    assert calls.read_text().split() == ["0", "1"]

    dataset = load_dataset(name="esol", data_dir=data, cache_dir=False)
    assert len(dataset) == len(VALID)
    chemprop_dir = out / "chemprop" / "esol" / "random"
    replicates = json.loads((chemprop_dir / "splits.json").read_text())
    rows = _read_csv(chemprop_dir / "data.csv")
    for seed, entry in enumerate(replicates):
        ours = json.loads((out / "ours-adam" / "esol" / "random" / "run" / "splits" / f"seed{seed}.json").read_text())
        for part in ("train", "val", "test"):
            assert [rows[i]["smiles"] for i in entry[part]] == [dataset.smiles[i] for i in ours[part]]
    piece = json.loads((chemprop_dir / cb.PIECE_FILE).read_text())
    for seed, entry in enumerate(replicates):
        y = [float(rows[i][ESOL_TARGET]) for i in entry["test"]]
        mean = sum(float(rows[i][ESOL_TARGET]) for i in entry["train"]) / len(entry["train"])
        expected = (sum((v - mean) ** 2 for v in y) / len(y)) ** 0.5
        assert piece["per_seed"][str(seed)]["test"]["rmse"] == pytest.approx(expected, rel=1e-5)
        assert piece["per_seed"][str(seed)]["train_seconds_per_epoch"] == pytest.approx(0.25)
        # chemprop's own logged MSE is kept beside our score as a cross-check
        assert piece["per_seed"][str(seed)]["chemprop_own_test"]["mse"] == pytest.approx(expected**2, rel=1e-5)
    text = (out / "bench.md").read_text()
    assert "| ours, adam |" in text and "| chemprop 0.0-fake (default D-MPNN) |" in text

    # an interrupted bench: ours resumes its run directory, chemprop redoes only the unfinished seed
    (out / "ours-adam" / "esol" / "random" / cb.PIECE_FILE).unlink()
    (chemprop_dir / cb.PIECE_FILE).unlink()
    (chemprop_dir / "seed1" / "result.json").unlink()
    assert cb.main(argv) == 0
    assert calls.read_text().split() == ["0", "1", "1"]
    assert "--resume" in (out / "ours-adam" / "esol" / "random" / "train.log").read_text().splitlines()[0]
    again = json.loads((chemprop_dir / cb.PIECE_FILE).read_text())["per_seed"]
    assert {k: v["test"] for k, v in again.items()} == {k: v["test"] for k, v in piece["per_seed"].items()}

    # everything cached: no process is started again
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"started {a[0]} although cached"))
    assert cb.main(argv) == 0
    assert calls.read_text().split() == ["0", "1", "1"]
    # other settings in the same --out are refused, naming the piece
    other = list(argv)
    other[other.index("--epochs") + 1] = "2"
    assert cb.main(other) == 2
    assert "other settings (epochs differ)" in capsys.readouterr().err


def test_importing_the_bench_loads_neither_chemprop_nor_rdkit():
    code = ("import sys, graphsam_ext.peers.chemprop_bench, graphsam_ext.peers.chemprop_launcher; "
            "print([m for m in sys.modules if m.split('.')[0] in ('rdkit', 'chemprop', 'lightning', 'matplotlib')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
