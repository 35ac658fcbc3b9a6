"""chemprop beside ``graphsam train`` on identical splits, the same epochs and the same scoring.

For each dataset and split the bench

1. runs ``graphsam train`` once per optimizer (``ours-<optimizer>``), which writes
   ``splits/seed<k>.json``: train / val / test indices into our kept molecules (after the SMILES
   RDKit rejects were dropped);
2. writes a CSV of exactly those kept molecules in our order (``data.csv``: ``smiles`` and the
   target columns, blank where a label is missing), converts our split files into chemprop's
   ``--splits-file`` format (a JSON list with one ``{"train", "val", "test"}`` per replicate; the
   indices stay ours because the CSV rows are our molecules) and runs chemprop's own command line,
   its default D-MPNN, in chemprop's virtual environment, one seed at a time
   (``--pytorch-seed k --data-seed k``);
3. scores chemprop's ``test_predictions.csv`` with our metric function
   (:func:`graphsam_ext.train.metrics.evaluate`) against our labels of the same test molecules,
   and reads ours from each seed's ``result.json``.

Timing: "train s/epoch" is the mean over epochs of the seconds spent on the training batches of
an epoch, without validation: ``train_seconds_per_epoch`` of our loop, and for chemprop a
Lightning callback (:mod:`graphsam_ext.peers.chemprop_launcher`) that clocks each epoch from its
start to the start of its validation. Molecules per second is training molecules / train s/epoch.

Layout of ``--out`` (each piece is cached; an interrupted bench resumes and skips finished ones)::

    ours-<optimizer>/<dataset>/<split>/run/         the graphsam run directory
    ours-<optimizer>/<dataset>/<split>/piece.json   per-seed test metrics and timing
    chemprop/<dataset>/<split>/data.csv, splits.json
    chemprop/<dataset>/<split>/seed<k>/             chemprop's output (run/), timing.json, result.json
    chemprop/<dataset>/<split>/piece.json
    bench.md, bench.json, bench.png                 tables, all numbers, bar chart

This module imports neither chemprop nor RDKit at import time; it talks to chemprop through its
command line only.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASETS = ("bbbp", "tox21", "sider", "clintox", "esol", "lipophilicity")
SPLITS = ("balanced-scaffold", "random")
DEFAULT_OPTIMIZERS = ("adam", "graphsam")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_EPOCHS = 30
DEFAULT_OUT = Path("runs") / "bench-chemprop"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
CHEMPROP_PACKAGES = ("chemprop", "torch==2.13.0")
CHEMPROP_VENV_NAME = ".venv-chemprop"
CHEMPROP_DEFAULT_WARMUP = 2  # chemprop's --warmup-epochs default; it refuses --epochs <= warm-up
PIECE_FILE = "piece.json"
GRAPHSAM_SET_BY_BENCH = {"--dataset", "--data", "--optimizer", "--optimizers", "--split", "--split-fractions", "--seeds",
                         "--first-seed", "--epochs", "--output-dir", "--resume", "--data-dir", "--overwrite"}
CHEMPROP_SET_BY_BENCH = {"-i", "--data-path", "-s", "--smiles-columns", "--target-columns", "-t", "--task-type",
                         "--splits-file", "--epochs", "-o", "--output-dir", "--save-dir", "--pytorch-seed",
                         "--data-seed", "--num-replicates", "--split", "--split-type", "--split-sizes"}
LAUNCHER = Path(__file__).with_name("chemprop_launcher.py")
# chemprop's training with our optimizer in place of its Adam (graphsam_ext.integrations.chemprop)
OPTIMIZER_LAUNCHER = Path(__file__).with_name("chemprop_optimizer_launcher.py")
CHEMPROP_OPTIMIZERS = ("adam", "graphsam", "sam", "asam")
METRIC = {"classification": "roc_auc", "regression": "rmse"}
METRIC_LABEL = {"roc_auc": "ROC-AUC (higher is better)", "rmse": "RMSE (lower is better)"}
CHEMPROP = "chemprop"


class BenchError(Exception):
    """A user error: printed as ``bench-chemprop: error: ...`` with exit status 2."""


# -- data and splits for chemprop -----------------------------------------------------------------
def _smiles_digest(smiles) -> str:
    return hashlib.sha256("\n".join(smiles).encode()).hexdigest()


def write_chemprop_csv(dataset, path) -> dict:
    """Write ``dataset``'s kept molecules, in its order, as chemprop's input CSV.

    Columns: ``smiles`` and one column per task (our task names); a missing label is a blank
    cell, which chemprop masks as we do. Row ``i`` (below the header) is our molecule ``i``, so
    our split indices are valid chemprop indices. Returns what identifies the file's content.
    """
    path = Path(path)
    names = list(dataset.task_names)
    if "smiles" in names:
        raise BenchError(f"{dataset.summary.get('source', 'the dataset')}: a target column is called 'smiles'; "
                         "rename it so that chemprop's CSV can hold the SMILES column")
    y = dataset.y.numpy() if hasattr(dataset.y, "numpy") else dataset.y
    mask = dataset.mask.numpy() if hasattr(dataset.mask, "numpy") else dataset.mask
    classification = dataset.task_type == "classification"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["smiles", *names])
        for i, smiles in enumerate(dataset.smiles):
            cells = []
            for t in range(len(names)):
                if not mask[i, t]:
                    cells.append("")
                elif classification:
                    cells.append(str(int(round(float(y[i, t])))))
                else:
                    cells.append(str(y[i, t]))
            writer.writerow([smiles, *cells])
    os.replace(tmp, path)
    return {"path": str(path), "num_molecules": len(dataset.smiles), "smiles_sha256": _smiles_digest(dataset.smiles),
            "task_names": names, "task_type": dataset.task_type}


def read_split_file(path) -> dict:
    """One of our ``splits/seed<k>.json`` files as ``{"train", "val", "test"}`` index lists."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"split file {path} not found: it is written by `graphsam train --output-dir "
                         f"{path.parent.parent}`; run that first (the bench does), or delete {path.parent.parent} "
                         "so that the bench runs it again")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"split file {path} is not valid JSON ({exc}); delete {path.parent.parent} so that the "
                         "bench runs `graphsam train` again") from exc
    missing = [k for k in ("train", "val", "test") if k not in saved]
    if missing:
        raise BenchError(f"split file {path} has no {', '.join(missing)} list; it must hold train, val and test "
                         f"indices as `graphsam train` writes them; delete {path.parent.parent} to redo it")
    return {k: [int(i) for i in saved[k]] for k in ("train", "val", "test")}


def convert_splits(split_files, num_molecules: int, csv_path=None) -> list[dict]:
    """Our per-seed split files -> chemprop's ``--splits-file`` content (one dict per replicate).

    The indices are kept as they are: chemprop's CSV (:func:`write_chemprop_csv`) holds our
    kept molecules in our order. Every index is checked to address one of the ``num_molecules``
    rows, and the three parts to be disjoint and non-empty.
    """
    where = f" of {csv_path}" if csv_path else ""
    replicates = []
    for path in split_files:
        split = read_split_file(path)
        seen: set[int] = set()
        for part, indices in split.items():
            if not indices:
                raise BenchError(f"split file {path}: the {part} part is empty; use another split or more data")
            bad = [i for i in indices if not 0 <= i < num_molecules]
            if bad:
                raise BenchError(
                    f"split file {path}: {part} index {bad[0]} is outside the {num_molecules} molecules{where}; the "
                    "split was made on another set of molecules (another data file or RDKit version): delete "
                    f"{Path(path).parent.parent} so that `graphsam train` makes it again on these molecules")
            overlap = seen.intersection(indices)
            if overlap or len(set(indices)) != len(indices):
                first = min(overlap) if overlap else next(i for i in indices if indices.count(i) > 1)
                raise BenchError(f"split file {path}: molecule {first} appears twice; train, val and test must be "
                                 f"disjoint; delete {Path(path).parent.parent} to redo the split")
            seen.update(indices)
        replicates.append(split)
    return replicates


def write_splits_file(replicates: list[dict], path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{k: r[k] for k in ("train", "val", "test")} for r in replicates]))


def check_molecule_count(results_path, num_molecules: int) -> None:
    """Our run's ``results.json`` must describe the same number of kept molecules."""
    results_path = Path(results_path)
    if not results_path.is_file():
        raise BenchError(f"{results_path} not found: `graphsam train` did not finish there; rerun the bench to resume "
                         f"it, or delete {results_path.parent} to start it again")
    ours = json.loads(results_path.read_text()).get("data", {}).get("num_molecules")
    if ours != num_molecules:
        raise BenchError(
            f"{results_path}: the run kept {ours} molecules but the dataset loaded now has {num_molecules}; the data "
            f"file or RDKit changed since that run; delete {results_path.parent} (and the bench's chemprop folder of "
            "this dataset) so that both are made again from the same molecules")


# -- reading results ------------------------------------------------------------------------------
def _mean(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def _sample_std(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def read_ours(run_dir, optimizer: str, seeds) -> dict:
    """Per-seed test metrics and timing of one ``graphsam train`` run directory."""
    run_dir = Path(run_dir)
    results = run_dir / "results.json"
    if not results.is_file():
        raise BenchError(f"{results} not found: `graphsam train` did not finish in {run_dir}; rerun the bench to "
                         f"resume it, or delete {run_dir} to start it again")
    payload = json.loads(results.read_text())
    task_type = payload["data"]["task_type"]
    per_seed = {}
    for seed in seeds:
        path = run_dir / optimizer / f"seed{seed}" / "result.json"
        if not path.is_file():
            raise BenchError(f"{path} not found: seed {seed} of {optimizer} did not finish; rerun the bench to resume "
                             f"it, or delete {run_dir} to start it again")
        res = json.loads(path.read_text())
        if not res.get("finished"):
            raise BenchError(f"{path}: seed {seed} stopped after epoch {res.get('epochs_run')}; rerun the bench to "
                             "resume it")
        n_train = len(read_split_file(run_dir / "splits" / f"seed{seed}.json")["train"])
        per_seed[str(seed)] = _seed_entry(res["test"], res["train_seconds_per_epoch"], n_train,
                                          res["epochs_run"], res.get("best_epoch"), res.get("num_parameters"))
    return {"task_type": task_type, "num_molecules": payload["data"]["num_molecules"], "per_seed": per_seed,
            "torch_threads": payload.get("environment", {}).get("num_threads")}


def _seed_entry(test: dict, train_seconds_per_epoch, n_train: int, epochs_run, best_epoch, num_parameters) -> dict:
    sec = float(train_seconds_per_epoch) if train_seconds_per_epoch else None
    return {"test": test, "train_seconds_per_epoch": sec, "train_molecules": n_train,
            "molecules_per_second": n_train / sec if sec else None, "epochs_run": epochs_run,
            "best_epoch": best_epoch, "num_parameters": num_parameters}


def read_predictions(path, dataset, test_indices) -> list[list[float]]:
    """chemprop's ``test_predictions.csv`` as rows of predictions, checked molecule by molecule
    against our test molecules (same SMILES, same order)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path} not found: chemprop did not finish this seed; see chemprop.log beside its folder "
                         "and rerun the bench")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0] if rows else [], rows[1:]
    names = list(dataset.task_names)
    missing = [n for n in ["smiles", *names] if n not in header]
    if missing:
        raise BenchError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header)}); chemprop must be run on "
                         "the bench's data.csv with --target-columns set to its task columns")
    if len(body) != len(test_indices):
        raise BenchError(f"{path}: {len(body)} predictions for {len(test_indices)} test molecules; the prediction file "
                         f"does not belong to this split; delete {path.parent.parent} and rerun the bench")
    s_col, cols = header.index("smiles"), [header.index(n) for n in names]
    preds = []
    for row, i in zip(body, test_indices):
        if row[s_col].strip() != dataset.smiles[i].strip():
            raise BenchError(f"{path}: row {len(preds) + 2} is {row[s_col]!r} but our test molecule there is "
                             f"{dataset.smiles[i]!r} (index {i}); delete {path.parent.parent} and rerun the bench")
        preds.append([float(row[c]) for c in cols])
    return preds


def score(dataset, indices, y_pred) -> dict:
    """Our metrics (``graphsam_ext.train.metrics.evaluate``) of ``y_pred`` on molecules ``indices``."""
    import numpy as np

    from graphsam_ext.train.metrics import evaluate

    y = dataset.y.numpy() if hasattr(dataset.y, "numpy") else np.asarray(dataset.y)
    mask = dataset.mask.numpy() if hasattr(dataset.mask, "numpy") else np.asarray(dataset.mask)
    idx = np.asarray(indices, dtype=np.int64)
    return evaluate(y[idx], np.asarray(y_pred, dtype=np.float64), mask[idx], dataset.task_type)


def read_chemprop_seed(seed_dir, dataset, split: dict, seed: int) -> dict:
    """Score one chemprop seed (its ``run/model_0/test_predictions.csv``) and read its timing."""
    seed_dir = Path(seed_dir)
    timing_path = seed_dir / "timing.json"
    if not timing_path.is_file():
        raise BenchError(f"{timing_path} not found: chemprop did not finish seed {seed}; see {seed_dir / 'chemprop.log'} "
                         "and rerun the bench")
    timing = json.loads(timing_path.read_text())
    fits = timing.get("fits") or []
    epochs = fits[0]["epochs"] if fits else []
    if not epochs:
        raise BenchError(f"{timing_path}: no training epoch was clocked; see {seed_dir / 'chemprop.log'}")
    preds = read_predictions(seed_dir / "run" / "model_0" / "test_predictions.csv", dataset, split["test"])
    test = score(dataset, split["test"], preds)
    train_s = _mean([e["train_seconds"] for e in epochs])
    entry = _seed_entry(test, train_s, len(split["train"]), len(epochs), None, fits[0].get("num_parameters"))
    entry.update(wall_seconds=timing.get("wall_seconds"), torch_threads=timing.get("torch_threads"),
                 chemprop_version=timing.get("chemprop"),
                 epoch_seconds=_mean([e["epoch_seconds"] for e in epochs]),
                 chemprop_own_test=chemprop_logged_test(seed_dir / "chemprop.log"))
    return entry


def chemprop_logged_test(log_path) -> dict:
    """The test scores chemprop itself logs (``test/<metric>: value``), kept as a cross-check of
    our scoring (its MSE is our RMSE squared); empty when the log has none."""
    path = Path(log_path)
    found = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            match = re.search(r"\btest/([A-Za-z0-9_-]+): (\S+)$", line.strip())
            if match:
                try:
                    found[match.group(1)] = float(match.group(2))
                except ValueError:
                    continue
    return found


# -- aggregation and tables -----------------------------------------------------------------------
def summarize_piece(piece: dict) -> dict:
    """Mean and sample std over seeds of the piece's test metric; mean train seconds per epoch and
    training molecules per second (mean training molecules / mean train seconds per epoch)."""
    metric = piece["metric"]
    seeds = sorted(piece["per_seed"], key=int)
    values = [piece["per_seed"][s]["test"].get(metric) for s in seeds]
    values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values]
    params = [piece["per_seed"][s].get("num_parameters") for s in seeds]
    seconds = _mean([piece["per_seed"][s]["train_seconds_per_epoch"] for s in seeds])
    molecules = _mean([piece["per_seed"][s]["train_molecules"] for s in seeds])
    return {
        "metric": metric, "values": values, "mean": _mean(values), "std": _sample_std(values), "seeds": len(seeds),
        "train_seconds_per_epoch": seconds, "train_molecules": molecules,
        "molecules_per_second": molecules / seconds if seconds and molecules else None,
        "epochs_run": _mean([piece["per_seed"][s]["epochs_run"] for s in seeds]),
        "num_parameters": next((p for p in params if p), None),
    }


def _fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def _contender_order(name: str) -> tuple:
    return (name == CHEMPROP or name.startswith(CHEMPROP + "-"), name)


def adam_of(contender: str) -> str | None:
    """The Adam contender a contender is paired with: ours-X with ours-adam, chemprop-X (ours in
    chemprop) with chemprop's own Adam; None for the Adam contenders themselves."""
    if contender.startswith(CHEMPROP + "-"):
        return CHEMPROP
    if contender.startswith("ours-") and contender != "ours-adam":
        return "ours-adam"
    return None


def paired_difference(piece: dict, adam: dict) -> str:
    """Per-seed differences of the test metric to the paired Adam contender (same seed, same split),
    their mean and the paired test's p-value (graphsam_ext.study.stats)."""
    from graphsam_ext.study.stats import paired_test

    metric = piece["metric"]
    seeds = sorted(set(piece["per_seed"]) & set(adam["per_seed"]), key=int)
    diffs = [piece["per_seed"][s]["test"].get(metric) - adam["per_seed"][s]["test"].get(metric) for s in seeds
             if piece["per_seed"][s]["test"].get(metric) is not None and adam["per_seed"][s]["test"].get(metric)
             is not None]
    if not diffs:
        return "n/a"
    test = paired_test(diffs)
    p = "" if math.isnan(test["p"]) else f"; {test['method']} p = {test['p']:.2f}"
    return f"{test['mean']:+.3f} ({', '.join(f'{d:+.3f}' for d in diffs)}{p})"


def format_table(pieces: list[dict]) -> str:
    """One markdown table for pieces of the same dataset and split (one row per contender)."""
    if not pieces:
        raise ValueError("format_table: no pieces")
    metric = pieces[0]["metric"]
    by_name = {p["contender"]: p for p in pieces}
    header = ["contender", f"test {METRIC_LABEL[metric]}", "per seed", "paired difference to Adam",
              "train s/epoch", "molecules/s", "parameters", "epochs run", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for piece in sorted(pieces, key=lambda p: _contender_order(p["contender"])):
        s = summarize_piece(piece)
        result = _fmt(s["mean"]) + (f" ± {_fmt(s['std'])}" if s["std"] is not None else "")
        params = f"{s['num_parameters']:,}" if s["num_parameters"] else "n/a"
        adam = by_name.get(adam_of(piece["contender"]))
        paired = "" if adam_of(piece["contender"]) is None else (paired_difference(piece, adam) if adam else "n/a")
        lines.append("| " + " | ".join([
            piece["label"], result, ", ".join(_fmt(v) for v in s["values"]), paired,
            _fmt(s["train_seconds_per_epoch"], 2),
            _fmt(s["molecules_per_second"], 0), params, _fmt(s["epochs_run"], 1), str(s["seeds"]),
        ]) + " |")
    return "\n".join(lines)


def _group(pieces: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    groups: dict = {}
    for p in pieces:
        groups.setdefault((p["dataset"], p["split"]), []).append(p)

    def key(item):
        (ds, split), _ = item
        return (DATASETS.index(ds) if ds in DATASETS else len(DATASETS), ds,
                SPLITS.index(split) if split in SPLITS else len(SPLITS), split)

    return sorted(groups.items(), key=key)


def _at_least(ours: float, theirs: float, metric: str) -> bool:
    return ours >= theirs if metric == "roc_auc" else ours <= theirs


def format_summary(pieces: list[dict]) -> list[str]:
    """Markdown: per split, one table over the datasets (each of our contenders and chemprop's
    default, and how our Adam contender compares), then the tally of datasets where each of ours
    is at least chemprop's metric and where our Adam contender is at least chemprop's throughput."""
    out = []
    for split in dict.fromkeys(p["split"] for p in pieces):
        groups = [(ds, {p["contender"]: p for p in group}) for (ds, sp), group in _group(pieces) if sp == split]
        ours = sorted({c for _, g in groups for c in g if c.startswith("ours-")}, key=_contender_order)
        if CHEMPROP not in {c for _, g in groups for c in g} or not ours:
            continue
        rows, tally, faster, compared = [], dict.fromkeys(ours, 0), 0, 0
        for ds, group in groups:
            base = group.get(CHEMPROP)
            if base is None:
                continue
            theirs = summarize_piece(base)
            row = [ds, theirs["metric"]]
            for c in ours:
                mine = summarize_piece(group[c]) if c in group else None
                row.append("–" if mine is None or mine["mean"] is None else
                           f"{_fmt(mine['mean'])} ± {_fmt(mine['std'])}")
                if mine and mine["mean"] is not None and theirs["mean"] is not None and \
                        _at_least(mine["mean"], theirs["mean"], theirs["metric"]):
                    tally[c] += 1
            row.append(f"{_fmt(theirs['mean'])} ± {_fmt(theirs['std'])}")
            adam = summarize_piece(group["ours-adam"]) if "ours-adam" in group else None
            if adam and adam["molecules_per_second"] and theirs["molecules_per_second"]:
                compared += 1
                ratio = adam["molecules_per_second"] / theirs["molecules_per_second"]
                faster += ratio >= 1.0
                row.append(f"{adam['molecules_per_second']:.0f} / {theirs['molecules_per_second']:.0f} = {ratio:.1f}x")
            else:
                row.append("–")
            rows.append(row)
        header = ["dataset", "metric", *[c.replace("ours-", "ours + ") for c in ours], "chemprop",
                  "molecules/s ours (adam) / chemprop"]
        out += [f"## Summary, {split} split", "",
                "| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
                *["| " + " | ".join(r) + " |" for r in rows], ""]
        out += [f"- {c.replace('ours-', 'ours + ')}: at least chemprop's mean test metric on {n} of {len(rows)} "
                "datasets." for c, n in tally.items()]
        if compared:
            out.append(f"- ours + adam: at least chemprop's training molecules/s on {faster} of {compared} datasets.")
        out.append("")
    return out


def format_report(pieces: list[dict]) -> str:
    """Markdown: a summary over the datasets per split, one section and table per dataset and
    split, and how the numbers were made."""
    if not pieces:
        raise BenchError("no finished piece to report; run the bench without --report first")
    out = ["# chemprop side by side", "", *format_summary(pieces)]
    for (ds, split), group in _group(pieces):
        epochs = sorted({p["epochs"] for p in group})
        seeds = sorted({s for p in group for s in p["per_seed"]}, key=int)
        out += [f"## {ds}, {split} split {'/'.join(str(round(f * 100)) for f in SPLIT_FRACTIONS)}", "",
                f"Seeds {', '.join(seeds)}; {' / '.join(map(str, epochs))} epochs for every contender; identical "
                "train / val / test molecules.", "", format_table(group), ""]
    threads = sorted({str(p.get("torch_threads")) for p in pieces})
    notes = sorted({n for p in pieces for n in p.get("notes", [])})
    out += ["Test metric: mean ± sample std over seeds, computed for every contender by "
            "`graphsam_ext.train.metrics.evaluate` on our labels of the same test molecules (chemprop from its "
            "test_predictions.csv). Train s/epoch: mean over epochs of the seconds spent on the training batches, "
            "without validation (ours: `train_seconds_per_epoch` of `graphsam train`; chemprop: a Lightning callback "
            "clocking each epoch from its start to the start of its validation). Molecules/s: training molecules / "
            f"train s/epoch (means over seeds). torch threads: {', '.join(threads)}.", ""]
    out += [f"- {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"


def plot_report(pieces: list[dict], path) -> Path | None:
    """Bar chart: per dataset (columns) and split, the test metric (mean, std as error bar) and the
    training molecules per second of each contender. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = _group(pieces)
    datasets = list(dict.fromkeys(ds for (ds, _), _ in groups))
    splits = list(dict.fromkeys(sp for (_, sp), _ in groups))
    contenders = sorted({p["contender"] for p in pieces}, key=_contender_order)
    labels = {p["contender"]: p["label"] for p in pieces}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width, height = max(6.0, 2.8 * len(datasets) + 1), 2.6 * 2 * len(splits)
    ncol = min(len(contenders), max(1, int(width // 2.4)))
    legend_inches = 0.3 * math.ceil(len(contenders) / ncol) + 0.1
    fig, axes = plt.subplots(2 * len(splits), len(datasets), figsize=(width, height + legend_inches), squeeze=False)
    by_key = dict(groups)
    for si, split in enumerate(splits):
        for di, ds in enumerate(datasets):
            ax_m, ax_t = axes[2 * si, di], axes[2 * si + 1, di]
            group = {p["contender"]: p for p in by_key.get((ds, split), [])}
            for ci, c in enumerate(contenders):
                if c not in group:
                    continue
                s = summarize_piece(group[c])
                color = colors[ci % len(colors)]
                if s["mean"] is not None:
                    ax_m.bar(ci, s["mean"], yerr=s["std"], color=color, capsize=3, label=labels[c])
                if s["molecules_per_second"] is not None:
                    ax_t.bar(ci, s["molecules_per_second"], color=color)
            metric = next(iter(group.values()))["metric"] if group else ""
            ax_m.set_title(f"{ds}, {split}", fontsize=9)
            ax_m.set_ylabel(f"test {metric}" + (" (higher better)" if metric == "roc_auc" else " (lower better)"),
                            fontsize=8)
            ax_t.set_ylabel("train molecules/s", fontsize=8)
            for ax in (ax_m, ax_t):
                ax.set_xticks([])
                ax.tick_params(labelsize=7)
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, legend_inches / (height + legend_inches), 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_pieces(out) -> list[dict]:
    """Every finished piece (``*/<dataset>/<split>/piece.json``) under ``out``."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob(f"*/*/*/{PIECE_FILE}"))]


def write_report(pieces: list[dict], out) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = format_report(pieces)
    (out / "bench.md").write_text(text)
    summary = [{**{k: p[k] for k in ("contender", "label", "dataset", "split", "epochs")}, **summarize_piece(p)}
               for p in pieces]
    (out / "bench.json").write_text(json.dumps({"pieces": pieces, "summary": summary}, indent=2))
    png = plot_report(pieces, out / "bench.png")
    return {"markdown": text, "md_path": out / "bench.md", "png_path": png}


# -- running --------------------------------------------------------------------------------------
def _write_json(path: Path, payload) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def our_defaults_digest() -> str:
    """A short digest of every default of `graphsam train` that can change a result (TrainConfig's
    fields and each optimizer's rho), so that a piece cached before a default changed is not
    reused as if it had run with the new one."""
    from dataclasses import fields

    from graphsam_ext.train import TrainConfig
    from graphsam_ext.train.optimizers import DEFAULT_RHO

    defaults = {f.name: TrainConfig.default(f.name) for f in fields(TrainConfig)}
    payload = json.dumps({"train": defaults, "rho": DEFAULT_RHO}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _cached_piece(path: Path, request: dict):
    if not path.is_file():
        return None
    piece = json.loads(path.read_text())
    if piece.get("request") != request:
        changed = sorted(k for k in set(request) | set(piece.get("request", {}))
                         if request.get(k) != piece.get("request", {}).get(k))
        why = " (the defaults of `graphsam train` changed since)" if "graphsam_defaults" in changed else ""
        raise BenchError(f"{path} was made with other settings ({', '.join(changed)} differ{why}); pass another "
                         f"--out, or delete {path.parent} to redo this piece")
    return piece


def _run_logged(cmd: list[str], log_path: Path, what: str) -> float:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        status = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise BenchError(f"{what} failed (exit status {status}); its output is in {log_path}; last lines:\n  "
                         + "\n  ".join(tail))
    return time.perf_counter() - start


class Bench:
    """One bench invocation: options resolved, datasets loaded once, pieces run or reused."""

    def __init__(self, opts: argparse.Namespace, log=print):
        self.opts, self.log = opts, log
        self.out = Path(opts.out)
        self.data_dir = opts.data_dir
        self.graphsam = opts.graphsam
        self.venv = Path(opts.chemprop_venv)
        self._datasets: dict = {}

    # ours
    def ours_piece(self, optimizer: str, dataset: str, split: str) -> dict:
        o = self.opts
        piece_dir = self.out / f"ours-{optimizer}" / dataset / split
        run_dir = piece_dir / "run"
        request = {"dataset": dataset, "split": split, "optimizer": optimizer, "epochs": o.epochs,
                   "seeds": o.seeds, "graphsam_args": o.graphsam_args, "graphsam_defaults": our_defaults_digest()}
        cached = _cached_piece(piece_dir / PIECE_FILE, request)
        if cached is not None:
            self.log(f"  ours ({optimizer}): cached in {piece_dir}")
            return cached
        started = piece_dir / "request.json"
        if started.is_file() and json.loads(started.read_text()) != request:
            raise BenchError(f"{started}: an unfinished run with other settings is in {run_dir}; pass another --out, or "
                             f"delete {piece_dir} to start this piece again")
        piece_dir.mkdir(parents=True, exist_ok=True)
        _write_json(started, request)
        if (run_dir / "config.json").is_file():
            cmd = [self.graphsam, "train", "--resume", str(run_dir), "--epochs", str(o.epochs), "--quiet"]
        else:
            cmd = [self.graphsam, "train", "--dataset", dataset, "--optimizer", optimizer, "--split", split,
                   "--split-fractions", *map(str, SPLIT_FRACTIONS), "--seeds", str(len(o.seeds)),
                   "--first-seed", str(o.seeds[0]), "--epochs", str(o.epochs), "--data-dir", str(self.data_dir),
                   "--output-dir", str(run_dir), "--quiet", *shlex.split(o.graphsam_args)]
        self.log(f"  ours ({optimizer}): {shlex.join(cmd)}")
        wall = _run_logged(cmd, piece_dir / "train.log", f"graphsam train ({optimizer}, {dataset}, {split})")
        res = read_ours(run_dir, optimizer, o.seeds)
        config = json.loads((run_dir / "config.json").read_text())
        piece = {"contender": f"ours-{optimizer}", "label": f"ours, {optimizer}", "dataset": dataset, "split": split,
                 "task_type": res["task_type"], "metric": METRIC[res["task_type"]], "epochs": o.epochs,
                 "request": request, "command": config.get("command") or cmd, "wall_seconds": wall,
                 "num_molecules": res["num_molecules"], "torch_threads": res["torch_threads"],
                 "per_seed": res["per_seed"]}
        _write_json(piece_dir / PIECE_FILE, piece)
        return piece

    # chemprop
    def dataset(self, name: str):
        if name not in self._datasets:
            from graphsam_ext.data import load_dataset

            self._datasets[name] = load_dataset(name=name, data_dir=self.data_dir)
        return self._datasets[name]

    def our_split_files(self, dataset: str, split: str) -> list[Path]:
        """The split files of the first optimizer's run; every other run must have the same ones."""
        runs = [self.out / f"ours-{opt}" / dataset / split / "run" for opt in self.opts.optimizers]
        files = [runs[0] / "splits" / f"seed{k}.json" for k in self.opts.seeds]
        for other in runs[1:]:
            for f in files:
                g = other / "splits" / f.name
                if g.is_file() and read_split_file(g) != read_split_file(f):
                    raise BenchError(f"{g} and {f} hold different splits of the same seed; delete both run folders "
                                     "so that the bench makes them again")
        return files

    def chemprop_piece(self, dataset: str, split: str, optimizer: str = "adam") -> dict:
        """chemprop's default D-MPNN trained by chemprop's CLI; with an ``optimizer`` other than
        "adam" (chemprop's own) through OPTIMIZER_LAUNCHER, which puts ours in place of its Adam."""
        o = self.opts
        ours = optimizer != "adam"
        contender = f"{CHEMPROP}-{optimizer}" if ours else CHEMPROP
        piece_dir = self.out / contender / dataset / split
        data = self.dataset(dataset)
        first_run = self.out / f"ours-{o.optimizers[0]}" / dataset / split / "run"
        check_molecule_count(first_run / "results.json", len(data))
        csv_meta = write_chemprop_csv(data, piece_dir / "data.csv")
        replicates = convert_splits(self.our_split_files(dataset, split), len(data), piece_dir / "data.csv")
        write_splits_file(replicates, piece_dir / "splits.json")
        inputs = hashlib.sha256(json.dumps([csv_meta["smiles_sha256"], replicates]).encode()).hexdigest()
        request = {"dataset": dataset, "split": split, "epochs": o.epochs, "seeds": o.seeds,
                   "chemprop_args": o.chemprop_args, "inputs_sha256": inputs}
        if ours:
            request.update(optimizer=optimizer, optimizer_args=o.chemprop_optimizer_args)
        cached = _cached_piece(piece_dir / PIECE_FILE, request)
        if cached is not None:
            self.log(f"  chemprop: cached in {piece_dir}")
            return cached
        notes, warmup = [], []
        if o.epochs <= CHEMPROP_DEFAULT_WARMUP and "--warmup-epochs" not in o.chemprop_args:
            warmup = ["--warmup-epochs", str(o.epochs - 1)]
            notes.append(f"chemprop refuses --epochs <= its warm-up ({CHEMPROP_DEFAULT_WARMUP} epochs): its warm-up "
                         f"was shortened to {o.epochs - 1} epoch(s) for this {o.epochs}-epoch budget")
        per_seed, commands = {}, {}
        for seed, rep in zip(o.seeds, replicates):
            seed_dir = piece_dir / f"seed{seed}"
            result_path = seed_dir / "result.json"
            seed_request = {**request, "seed": seed}
            if result_path.is_file() and json.loads(result_path.read_text()).get("request") == seed_request:
                saved = json.loads(result_path.read_text())
                per_seed[str(seed)], commands[str(seed)] = saved["result"], saved["command"]
                self.log(f"  chemprop seed {seed}: cached in {seed_dir}")
                continue
            shutil.rmtree(seed_dir / "run", ignore_errors=True)
            seed_dir.mkdir(parents=True, exist_ok=True)
            write_splits_file([rep], seed_dir / "splits.json")
            args = ["train", "--data-path", str(piece_dir / "data.csv"), "-s", "smiles",
                    "--target-columns", *csv_meta["task_names"], "-t", csv_meta["task_type"],
                    "--splits-file", str(seed_dir / "splits.json"), "--epochs", str(o.epochs),
                    "-o", str(seed_dir / "run"), "--pytorch-seed", str(seed), "--data-seed", str(seed),
                    *warmup, *shlex.split(o.chemprop_args)]
            plain = [str(self.venv / "bin" / "chemprop"), *args]
            cmd = [str(self.venv / "bin" / "python"), str(LAUNCHER), str(seed_dir / "timing.json"), *args]
            if ours:  # no plain chemprop command does this: the launcher's is the one to rerun
                cmd = [str(self.venv / "bin" / "python"), str(OPTIMIZER_LAUNCHER), *self.optimizer_flags(optimizer),
                       str(seed_dir / "timing.json"), *args]
                plain = cmd
            self.log(f"  chemprop seed {seed}: {shlex.join(plain)}")
            wall = _run_logged(cmd, seed_dir / "chemprop.log", f"chemprop train ({dataset}, {split}, seed {seed})")
            entry = {**read_chemprop_seed(seed_dir, data, rep, seed), "process_seconds": wall}
            if ours:
                entry["optimizer"] = json.loads((seed_dir / "timing.json").read_text()).get("optimizer")
            _write_json(result_path, {"request": seed_request, "command": plain, "result": entry})
            per_seed[str(seed)], commands[str(seed)] = entry, plain
        version = next((e["chemprop_version"] for e in per_seed.values() if e.get("chemprop_version")), None)
        label = f"chemprop {version}" if version else "chemprop"
        piece = {"contender": contender, "label": f"{label} (default D-MPNN{', ' + optimizer if ours else ''})",
                 "dataset": dataset, "split": split, "task_type": data.task_type, "metric": METRIC[data.task_type],
                 "epochs": o.epochs, "request": request, "commands": commands,
                 "wall_seconds": sum(e.get("process_seconds") or 0.0 for e in per_seed.values()),
                 "num_molecules": len(data), "notes": notes,
                 "torch_threads": next((e.get("torch_threads") for e in per_seed.values()), None),
                 "per_seed": per_seed}
        _write_json(piece_dir / PIECE_FILE, piece)
        return piece

    def optimizer_flags(self, optimizer: str) -> list[str]:
        """OPTIMIZER_LAUNCHER's own flags: the optimizer, its options, where graphsam_ext lives."""
        package_parent = Path(__file__).resolve().parents[2]
        return ["--optimizer", optimizer, "--optimizer-args", json.dumps(self.opts.chemprop_optimizer_args),
                "--graphsam-ext-path", str(package_parent)]

    def ensure_chemprop(self) -> None:
        if (self.venv / "bin" / "chemprop").is_file():
            return
        python = shutil.which("python3") or sys.executable
        steps = [[python, "-m", "venv", str(self.venv)],
                 [str(self.venv / "bin" / "pip"), "install", *CHEMPROP_PACKAGES]]
        for step in steps:
            self.log(f"  installing chemprop: {shlex.join(step)}")
            if subprocess.run(step).returncode != 0:
                raise BenchError(f"`{shlex.join(step)}` failed; install chemprop by hand with `{python} -m venv "
                                 f"{self.venv} && {self.venv}/bin/pip install {' '.join(CHEMPROP_PACKAGES)}`, or "
                                 "point --chemprop-venv at an environment that has it")

    def run(self) -> list[dict]:
        o, pieces = self.opts, []
        self.ensure_chemprop()
        for dataset in o.datasets:
            for split in o.splits:
                self.log(f"{dataset}, {split}:")
                for opt in o.optimizers:
                    pieces.append(self.ours_piece(opt, dataset, split))
                for chemprop_optimizer in o.chemprop_optimizers:
                    pieces.append(self.chemprop_piece(dataset, split, chemprop_optimizer))
        return pieces


# -- command line ---------------------------------------------------------------------------------
def _repo_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def _short(path: Path) -> str:
    """``path`` relative to the working directory when that is shorter (commands stay readable)."""
    rel = os.path.relpath(path)
    if rel.count("..") > 2 or len(rel) >= len(str(path)):
        return str(path)
    return rel if "/" in rel else os.path.join(".", rel)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench-chemprop",
        description="Our graph transformer (`graphsam train`, one run per optimizer) beside chemprop's default "
                    "D-MPNN on identical splits and the same epochs; one markdown table per dataset and split, "
                    "a PNG, and every piece cached under --out.")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, metavar="NAME",
                   help=f"MoleculeNet datasets (default: all of {' '.join(DATASETS)})")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, metavar="SPLIT",
                   help="balanced-scaffold and/or random, 80/10/10 (default both)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), metavar="K",
                   help="consecutive seeds (default 0 1 2)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs for every contender (default {DEFAULT_EPOCHS})")
    p.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS), metavar="NAME",
                   help="our optimizers, one `graphsam train` each (default adam graphsam)")
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--graphsam-args", default="", metavar="ARGS",
                   help='extra `graphsam train` flags in one string, written with "=" so that a single flag '
                        'works too: --graphsam-args="--hidden 64 --layers 2"')
    p.add_argument("--chemprop-args", default="", metavar="ARGS",
                   help="extra `chemprop train` flags in one string, with \"=\" like --graphsam-args (default "
                        "none: chemprop's defaults)")
    p.add_argument("--chemprop-optimizers", nargs="+", default=["adam"], choices=CHEMPROP_OPTIMIZERS, metavar="NAME",
                   help="optimizers chemprop's own training runs with, one chemprop contender each: adam (chemprop's "
                        "own, the default), graphsam, sam, asam (ours in place of its Adam, its learning-rate "
                        "schedule kept)")
    p.add_argument("--chemprop-optimizer-args", default="", metavar="ARGS",
                   help="options of our optimizers in chemprop, key=value pairs in one string: "
                        '--chemprop-optimizer-args="rho=0.05 beta=0.99" (default: the optimizers\' defaults)')
    p.add_argument("--report", action="store_true", help="run nothing: aggregate the pieces already under --out")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder of the MoleculeNet CSVs (default $GRAPHSAM_DATA_DIR, else ../shared/data/moleculenet "
                        "beside the repository)")
    p.add_argument("--chemprop-venv", metavar="DIR",
                   help=f"chemprop's virtual environment, created when missing (default {CHEMPROP_VENV_NAME} in the "
                        "repository)")
    p.add_argument("--graphsam", metavar="PATH",
                   help="the graphsam executable (default: the one beside this Python, else graphsam on PATH)")
    return p


def parse_optimizer_args(text: str) -> dict:
    """``"rho=0.05 beta=0.99"`` -> ``{"rho": 0.05, "beta": 0.99}`` (values read as JSON: numbers,
    true / false, null; anything else stays a string)."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise BenchError(f"--chemprop-optimizer-args: cannot split {text!r} ({exc})") from exc
    out = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key.isidentifier():
            raise BenchError(f"--chemprop-optimizer-args: {token!r} is not key=value; write e.g. "
                             '--chemprop-optimizer-args="rho=0.05 beta=0.99"')
        if key in out:
            raise BenchError(f"--chemprop-optimizer-args: {key} is given twice")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def resolve_options(argv=None) -> argparse.Namespace:
    opts = build_parser().parse_args(argv)
    if opts.epochs < 1:
        raise BenchError(f"--epochs must be >= 1, got {opts.epochs}")
    seeds = opts.seeds
    if min(seeds) < 0 or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise BenchError(f"--seeds must be consecutive non-negative integers in increasing order (graphsam train runs "
                         f"seeds S..S+N-1), got {' '.join(map(str, seeds))}; e.g. --seeds 0 1 2")
    for flag in ("datasets", "splits", "optimizers", "chemprop_optimizers"):
        values = getattr(opts, flag)
        if len(set(values)) != len(values):
            raise BenchError(f"--{flag} lists a value twice: {' '.join(values)}")
    for flag, reserved in (("graphsam_args", GRAPHSAM_SET_BY_BENCH), ("chemprop_args", CHEMPROP_SET_BY_BENCH)):
        option = "--" + flag.replace("_", "-")
        try:
            tokens = shlex.split(getattr(opts, flag))
        except ValueError as exc:
            raise BenchError(f"{option}: cannot split {getattr(opts, flag)!r} into flags ({exc})") from exc
        taken = [t for t in tokens if t.split("=")[0] in reserved]
        if taken:
            raise BenchError(f"{option}: {taken[0]} is set by the bench itself (same for every contender); use the "
                             "bench's own --datasets, --splits, --seeds, --epochs, --optimizers or --out instead")
    opts.chemprop_optimizer_args = parse_optimizer_args(opts.chemprop_optimizer_args)
    root = _repo_root()
    if opts.data_dir is None:
        opts.data_dir = os.environ.get("GRAPHSAM_DATA_DIR") or _short(root.parent / "shared" / "data" / "moleculenet")
    if opts.chemprop_venv is None:
        opts.chemprop_venv = _short(root / CHEMPROP_VENV_NAME)
    if opts.graphsam is None:
        beside = Path(sys.executable).parent / "graphsam"
        opts.graphsam = _short(beside) if beside.is_file() else shutil.which("graphsam")
        if not opts.report and opts.graphsam is None:
            raise BenchError("no graphsam executable found beside this Python or on PATH; install the package "
                             "(make setup) or pass --graphsam PATH")
    return opts


def main(argv=None) -> int:
    try:
        opts = resolve_options(argv)
        if not opts.report:
            if not Path(opts.data_dir).is_dir():
                raise BenchError(f"data folder {opts.data_dir} not found; set GRAPHSAM_DATA_DIR or pass --data-dir to "
                                 "the folder holding bbbp.csv, esol.csv, ...")
            start = time.perf_counter()
            pieces = Bench(opts).run()
            print(f"bench finished in {time.perf_counter() - start:.0f} s")
        else:
            pieces = load_pieces(opts.out)
        report = write_report(pieces, opts.out)
    except BenchError as exc:
        print(f"bench-chemprop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume (finished pieces are kept)", file=sys.stderr)
        return 130
    print(report["markdown"])
    print(f"tables: {report['md_path']}" + (f", chart: {report['png_path']}" if report["png_path"] else
                                            " (no chart: matplotlib is not installed)"))
    return 0
