"""The searches that chose the defaults: candidate settings x datasets x seeds, each trained by
``graphsam train`` and judged on its validation metric only (never test).

Stage 1 chose the default model (Adam); stage 2 the optimizers' hyper-parameters on that model:
SAM's rho and GraphSAM's (rho, gamma), the same number of trials for each, beside Adam.
Every finished (candidate, dataset, seed) run keeps its ``results.json`` under ``--out``, so an
interrupted search resumes where it stopped; ``--report`` prints the tables of what exists.

    python scripts/search_defaults.py --stage 1          # model candidates on three datasets
    python scripts/search_defaults.py --stage 2          # rho / gamma trials on three datasets
    python scripts/search_defaults.py --report
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ADAM = ["--optimizer", "adam"]
SMALL = ["--hidden", "64", "--layers", "2", "--heads", "4", "--edge-hidden", "32"]
WIDE = ["--hidden", "128", "--layers", "2", "--heads", "8", "--edge-hidden", "32"]
MID = ["--hidden", "128", "--layers", "3", "--heads", "8", "--edge-hidden", "32"]
PAIRS_ALL = ["--attention", "pairs", "--pair-distance", "all"]
MODEL_CANDIDATES = {
    "bonds-small-mean": SMALL + ["--readout", "mean"],
    "bonds-small": SMALL + ["--readout", "mean_sum"],
    "bonds-small-desc": SMALL + ["--readout", "mean_sum", "--descriptors"],
    "pairsall-small": SMALL + ["--readout", "mean_sum"] + PAIRS_ALL,
    "bonds-wide": WIDE + ["--readout", "mean_sum"],
    "bonds-mid": MID + ["--readout", "mean_sum"],
    "pairs3-small": SMALL + ["--readout", "mean_sum", "--attention", "pairs", "--pair-distance", "3"],
    "pairsall-mid": MID + ["--readout", "mean_sum"] + PAIRS_ALL,
}
# stage 2: the default model; six trials for SAM (rho) and six for GraphSAM (rho x gamma, beta at
# the paper's 0.99, lambda 1), so neither optimizer gets more tuning than the other
SAM_RHOS = ("0.001", "0.002", "0.005", "0.01", "0.02", "0.05")
GRAPHSAM_TRIALS = tuple((rho, gamma) for rho in ("0.01", "0.05", "0.2") for gamma in ("0.5", "0.9"))
OPTIMIZER_CANDIDATES = {
    "opt-adam": [],
    **{f"opt-sam-rho{rho}": ["--optimizer", "sam", "--rho", rho] for rho in SAM_RHOS},
    **{f"opt-graphsam-rho{rho}-gamma{gamma}": ["--optimizer", "graphsam", "--rho", rho, "--gamma", gamma]
       for rho, gamma in GRAPHSAM_TRIALS},
}
# stage 1 ran while the descriptors were off by default: its candidates say so explicitly
CANDIDATES = {**{name: ADAM + args + ([] if "--descriptors" in args else ["--no-descriptors"])
                 for name, args in MODEL_CANDIDATES.items()},
              **{name: args or ADAM for name, args in OPTIMIZER_CANDIDATES.items()}}
# stage 1: every model candidate on three datasets (one seed); pairs3 and pairsall-mid were
# dropped after esol (slower than pairsall-small and bonds-mid, and no better on validation)
STAGES = {1: ([n for n in MODEL_CANDIDATES if n not in ("pairs3-small", "pairsall-mid")],
              ["esol", "bbbp", "lipophilicity"], [0]),
          2: (list(OPTIMIZER_CANDIDATES), ["default", "esol", "bbbp"], [0])}
COMMON = ["--split", "balanced-scaffold", "--epochs", "30", "--quiet", "--num-threads", "1"]


def _trial_number(name: str) -> int:
    """A stage-2 trial's place among its optimizer's trials, so SAM and GraphSAM trials alternate."""
    same = [n for n in OPTIMIZER_CANDIDATES if n.split("-rho")[0] == name.split("-rho")[0]]
    return same.index(name) if name in same else 0


def run_one(out: Path, name: str, dataset: str, seed: int) -> None:
    run_dir = out / name / f"{dataset}-seed{seed}"
    if (run_dir / "results.json").exists():
        return
    cmd = [str(Path(sys.executable).parent / "graphsam"), "train", "--dataset", dataset, "--seeds", "1",
           "--first-seed", str(seed), "--output-dir", str(run_dir), "--overwrite", *COMMON, *CANDIDATES[name]]
    log = out / name / f"{dataset}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)


def finished(out: Path, name: str, dataset: str) -> dict | None:
    """The validation metric, selected epochs and train s/epoch of a candidate's finished runs."""
    vals, epochs, secs, metric = [], [], [], ""
    for res in sorted((out / name).glob(f"{dataset}-seed*/results.json")):
        payload = json.loads(res.read_text())
        for run in (run for by_seed in payload["results"].values() for run in by_seed.values()):
            metric = run["metric"]
            vals.append(run["val"][metric])
            epochs.append(run["best_epoch"])
            secs.append(run["train_seconds_per_epoch"])
    return {"metric": metric, "val": float(np.mean(vals)), "epochs": epochs, "secs": float(np.mean(secs))} if vals else None


def report(out: Path) -> str:
    rows = ["| candidate | dataset | seeds | val metric | selected epoch | train s/epoch |", "| --- | --- | --- | --- | --- | --- |"]
    for name in CANDIDATES:
        datasets = sorted({p.name.rsplit("-seed", 1)[0] for p in (out / name).glob("*-seed*") if p.is_dir()}
                          if (out / name).is_dir() else [])
        for ds in datasets:
            r = finished(out, name, ds)
            if r:
                rows.append(f"| {name} | {ds} | {len(r['epochs'])} | {r['metric']} {r['val']:.3f} | "
                            f"{', '.join(map(str, r['epochs']))} | {r['secs']:.2f} |")
    return "\n".join(rows) + "\n\n" + optimizer_report(out)


def optimizer_report(out: Path) -> str:
    """Stage 2: each trial's validation metric per dataset and its mean relative gain over Adam's
    (positive = better than Adam; ROC-AUC higher, RMSE lower), over the datasets it finished."""
    _, datasets, _ = STAGES[2]
    adam = {ds: finished(out, "opt-adam", ds) for ds in datasets}
    head = "| trial | " + " | ".join(datasets) + " | mean gain over Adam |"
    rows = [head, "|" + " --- |" * (len(datasets) + 2)]
    for name in OPTIMIZER_CANDIDATES:
        cells, gains = [], []
        for ds in datasets:
            r = finished(out, name, ds)
            cells.append("" if r is None else f"{r['val']:.3f} (ep {', '.join(map(str, r['epochs']))})")
            if r is not None and adam[ds] is not None:
                sign = -1.0 if r["metric"] in ("rmse", "mae") else 1.0
                gains.append(sign * (r["val"] - adam[ds]["val"]) / adam[ds]["val"])
        if any(cells):
            gain = f"{100 * np.mean(gains):+.2f}% ({len(gains)})" if gains else ""
            rows.append(f"| {name} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=sorted(STAGES), default=1)
    parser.add_argument("--out", default="runs/search", help="where the runs go (default runs/search)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2, one CPU thread each)")
    parser.add_argument("--report", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.report:
        names, datasets, seeds = STAGES[args.stage]
        cells = [(n, d, s) for s in seeds for d in datasets for n in names]
        # the cheap candidates first, so each dataset's main comparison is in early
        cells.sort(key=lambda c: (c[0] not in ("bonds-small", "bonds-small-desc", "opt-adam"), c[2],
                                  datasets.index(c[1]), _trial_number(c[0])))
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda c: run_one(out, *c), cells))
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
