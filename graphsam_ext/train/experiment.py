"""Several optimizers x several seeds on identical splits: the run directory, results.json,
metrics.csv, the plots and the summary table.

Run directory layout::

    config.json                     the TrainConfig and how the run was started
    splits/seed<k>.json             train / val / test indices of each seed (reused on resume)
    <optimizer>/seed<k>/last.pt     resume state after the last finished epoch
    <optimizer>/seed<k>/best.pt     the selected model (what `graphsam predict` loads)
    <optimizer>/seed<k>/result.json per-seed result with the epoch history
    results.json, metrics.csv, val_<metric>_vs_epoch.png, val_<metric>_vs_time.png
"""
from __future__ import annotations

import csv
import json
import math
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from graphsam_ext import __version__
from graphsam_ext.errors import UserError
from graphsam_ext.train.config import TrainConfig
from graphsam_ext.train.loop import SeedRun, SplitData
from graphsam_ext.train.metrics import HIGHER_IS_BETTER, default_metric, metric_names
from graphsam_ext.train.targets import TargetScaler

RUN_MARKER = "config.json"


def write_run_marker(run_dir: Path, cfg: TrainConfig, command: list[str] | None) -> None:
    """``config.json``: the configuration and the command of a run (what ``--resume`` reads)."""
    (Path(run_dir) / RUN_MARKER).write_text(json.dumps(
        {"graphsam_ext_version": __version__, "config": cfg.to_dict(), "command": command,
         "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


def load_data(cfg: TrainConfig):
    """The dataset named by ``cfg`` (a CSV, a MoleculeNet name, or the embedded default)."""
    from graphsam_ext.data import Featurizer, load_dataset

    featurizer = Featurizer(pair_distance=cfg.pair_distance if cfg.attention == "pairs" else None,
                            descriptors=cfg.descriptors)
    return load_dataset(
        name=cfg.dataset, path=cfg.data_path, smiles_column=cfg.smiles_column,
        target_columns=cfg.target_columns, task_type=cfg.task_type, data_dir=cfg.data_dir,
        featurizer=featurizer,
    )


def split_for_seed(cfg: TrainConfig, dataset, seed: int, run_dir: Path, write: bool = True) -> SplitData:
    """This seed's split (read back from the run directory when it was made before; written
    there unless ``write`` is false)."""
    path = run_dir / "splits" / f"seed{seed}.json"
    from graphsam_ext.data import load_split, save_split, split_indices

    if path.exists():
        train, val, test = load_split(path)
    else:
        train, val, test = (
            [int(i) for i in part]
            for part in split_indices(dataset, kind=cfg.split, fractions=cfg.split_fractions, seed=seed)
        )
        if write:
            save_split(path, (train, val, test), kind=cfg.split, seed=seed)
    if not train or not val or not test:
        raise UserError(
            f"the {cfg.split} split of {len(dataset)} molecules with fractions {cfg.split_fractions} leaves an "
            f"empty part (train {len(train)}, val {len(val)}, test {len(test)}); use more data or other fractions"
        )
    if dataset.task_type == "classification":
        for part, idx in (("validation", val), ("test", test)):
            if not _has_both_classes(dataset, idx):
                raise UserError(
                    f"the {cfg.split} split (seed {seed}) leaves no task with both classes in the {part} set, so "
                    f"ROC-AUC is undefined there; use --split balanced-scaffold or --split random, or other "
                    f"--split-fractions"
                )
    scaler = None
    if dataset.task_type == "regression":
        y = torch.stack([torch.as_tensor(dataset[i].y, dtype=torch.float32).reshape(-1) for i in train])
        mask = torch.stack([torch.as_tensor(dataset[i].mask, dtype=torch.bool).reshape(-1) for i in train])
        scaler = TargetScaler.fit(y, mask)
    return SplitData(dataset, train, val, test, scaler)


def _has_both_classes(dataset, indices) -> bool:
    y = torch.stack([torch.as_tensor(dataset[i].y).reshape(-1) for i in indices])
    mask = torch.stack([torch.as_tensor(dataset[i].mask, dtype=torch.bool).reshape(-1) for i in indices])
    pos = ((y > 0.5) & mask).any(0)
    neg = ((y <= 0.5) & mask).any(0)
    return bool((pos & neg).any())


def finite_or_none(x):
    """``x`` with every non-finite float (also inside dicts and lists) replaced by None, for JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    return x


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def summarize(results: dict, task_type: str) -> dict:
    """Per optimizer: test metrics mean and sample std over seeds, seconds and passes per epoch."""
    out = {}
    for opt, by_seed in results.items():
        done = [r for r in by_seed.values() if "test" in r]
        entry = {"seeds": len(done)}
        for name in metric_names(task_type):
            mean, std = _mean_std([r["test"].get(name, math.nan) for r in done])
            entry[f"test_{name}_mean"], entry[f"test_{name}_std"] = mean, std
        for key in ("train_seconds_per_epoch", "train_cpu_seconds_per_epoch", "epoch_seconds", "passes_per_epoch", "steps_per_epoch", "best_epoch",
                    "epochs_run"):
            entry[key] = _mean_std([r[key] for r in done])[0]
        entry["num_parameters"] = done[0]["num_parameters"] if done else None
        out[opt] = entry
    return out


def protocol_text(cfg: TrainConfig, metric: str) -> str:
    frac = "/".join(f"{round(f * 100)}" for f in cfg.split_fractions)
    accumulated = f" x {cfg.accumulate} accumulated micro-batches" if cfg.accumulate > 1 else ""
    return (
        f"{cfg.split} split {frac}; seeds {cfg.seed_list} (seed sets the split where the split is random, the "
        f"initial weights and the batch order; every optimizer sees the same split, weights and batches); "
        f"up to {cfg.epochs} epochs, batch {cfg.batch_size}{accumulated}, {cfg.schedule} LR schedule with peak "
        f"{cfg.lr}; "
        f"model selected on validation {metric}, early stop after {cfg.patience} epochs without improvement; "
        f"test metrics of the selected epoch, mean +- sample std over seeds"
    )


def format_table(summary: dict, task_type: str, baseline: str | None = None, markdown: bool = False) -> str:
    """Table of test metrics (mean +- std), wall-clock and CPU seconds per training epoch (each
    with its ratio to ``baseline``) and forward/backward passes per epoch; plain text or markdown."""
    names = metric_names(task_type)
    base = summary.get(baseline or "", {})
    timing = (("train_seconds_per_epoch", "wall s/epoch"), ("train_cpu_seconds_per_epoch", "CPU s/epoch"))
    header = ["optimizer", *[f"test {n}" for n in names]]
    for key, label in timing:
        header.append(label)
        if base.get(key):
            header.append(f"x {baseline}")
    header += ["passes/epoch", "steps/epoch", "best epoch", "seeds"]
    rows = [header]
    for opt, e in summary.items():
        row = [opt, *[f"{e[f'test_{n}_mean']:.4f} ± {e[f'test_{n}_std']:.4f}" for n in names]]
        for key, _ in timing:
            row.append(f"{e[key]:.2f}")
            if base.get(key):
                row.append(f"{e[key] / base[key]:.2f}")
        row += [f"{e['passes_per_epoch']:.1f}", f"{e['steps_per_epoch']:.0f}", f"{e['best_epoch']:.1f}", str(e["seeds"])]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "|".join(" --- " for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_metrics_csv(results: dict, path: Path, task_type: str) -> None:
    names = metric_names(task_type)
    fields = ["optimizer", "seed", "epoch", "train_loss", "lr", "rho", "train_seconds", "train_cpu_seconds",
              "eval_seconds",
              "elapsed_seconds", "passes", "steps", *[f"val_{n}" for n in names]]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for opt, by_seed in results.items():
            for seed, res in sorted(by_seed.items()):
                for r in res.get("history", []):
                    w.writerow([opt, seed, r["epoch"], r["train_loss"], r["lr"], r["rho"], r["train_seconds"],
                                r["train_cpu_seconds"], r["eval_seconds"], r["elapsed_seconds"], r["passes"], r["steps"],
                                *[r["val"].get(n) for n in names]])


def environment(device: torch.device) -> dict:
    from graphsam_ext._backend import build_info

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "num_threads": torch.get_num_threads(), "platform": platform.platform(),
           "native_library": bool(build_info().get("native"))}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _is_done(cfg: TrainConfig, seed_dir: Path) -> dict | None:
    """The finished result in ``seed_dir``, unless --resume raised --epochs or --patience beyond
    where it stopped."""
    done = seed_dir / "result.json"
    if not done.exists():
        return None
    res = json.loads(done.read_text())
    epochs_run = res.get("epochs_run", 0)
    return res if epochs_run >= cfg.epochs or epochs_run - res.get("best_epoch", 0) >= cfg.patience else None


_WORKER: dict = {}


def _worker_start(cfg_dict: dict, dataset, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(cfg=TrainConfig.from_dict(cfg_dict), dataset=dataset)


def _worker_run(opt: str, seed: int, run_dir: str, device: str) -> tuple[str, int]:
    cfg, dataset = _WORKER["cfg"], _WORKER["dataset"]
    data = split_for_seed(cfg, dataset, seed, Path(run_dir), write=False)
    SeedRun(cfg, opt, seed, data, Path(run_dir) / opt / f"seed{seed}", device).run()
    return opt, seed


def _run_in_processes(cfg: TrainConfig, run_dir: Path, dataset, device, jobs: int, log) -> None:
    """Train every unfinished (optimizer, seed) pair to its end, ``jobs`` at a time, each in a
    process of its own with the parent's torch thread count; the pairs leave their result.json
    (and checkpoints) where the one-process loop finds them. Splits are written here first."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    for seed in cfg.seed_list:
        split_for_seed(cfg, dataset, seed, run_dir)
    pending = [(opt, seed) for seed in cfg.seed_list for opt in cfg.optimizers
               if _is_done(cfg, run_dir / opt / f"seed{seed}") is None]
    if not pending:
        return
    # the slow optimizers first, so the last process to finish is not one that started last
    pending.sort(key=lambda pair: -_relative_cost(pair[0]))
    log(f"training {len(pending)} (optimizer, seed) runs, {min(jobs, len(pending))} at a time")
    context = multiprocessing.get_context("spawn")  # no fork of a process whose OpenMP pool has run
    with ProcessPoolExecutor(min(jobs, len(pending)), mp_context=context, initializer=_worker_start,
                             initargs=(cfg.to_dict(), dataset, torch.get_num_threads())) as pool:
        futures = [pool.submit(_worker_run, opt, seed, str(run_dir), str(device)) for opt, seed in pending]
        for future in as_completed(futures):
            if future.exception() is not None:  # the runs not started yet are dropped, then it is raised
                for other in futures:
                    other.cancel()
                raise future.exception()
            opt, seed = future.result()
            log(f"{opt:>12} seed {seed}: finished")


def _relative_cost(optimizer: str) -> float:
    """Forward/backward passes per step, roughly: the SAM family makes up to two."""
    from graphsam_ext.train.optimizers import SAM_FAMILY

    return 2.0 if optimizer in SAM_FAMILY else 1.0


def run_experiment(cfg: TrainConfig, run_dir, device="cpu", *, progress: bool = False,
                   log: Callable[[str], None] | None = None, command: list[str] | None = None,
                   dataset=None, stop_after_epochs: int | None = None, dist=None, jobs: int = 1) -> dict:
    """Train every optimizer of ``cfg`` on every seed and write the results into ``run_dir``.

    Within a seed the optimizers take turns epoch by epoch, so that load changes on a shared
    machine hit every optimizer alike (each run keeps its own random stream, so the interleaving
    does not change any result). Finished (optimizer, seed) pairs found in ``run_dir`` are reused and unfinished ones resume
    from their ``last.pt``. Returns the content of results.json.

    dist: this process's ``distributed.DistContext`` when it is one rank of a data-parallel run
    (every rank calls this function; only rank 0 logs and writes files).
    jobs: with more than 1, the unfinished (optimizer, seed) pairs first train in ``jobs``
    processes at once (``_run_in_processes``), each to its end, instead of taking turns: faster
    on a machine with spare cores, but their timings then share the machine differently.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"jobs (--jobs) must be an integer >= 1, got {jobs!r}")
    if jobs > 1 and dist is not None:
        raise UserError("jobs (--jobs) > 1 trains each run in its own process: it cannot be combined with "
                        "--nproc-per-node (one data-parallel run); drop one of them")
    if jobs > 1 and stop_after_epochs is not None:
        raise ValueError("stop_after_epochs interleaves the runs in this process; it needs jobs=1")
    main = dist is None or dist.is_main
    log = (log or (lambda msg: None)) if main else (lambda msg: None)
    progress = progress and main
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    marker = run_dir / RUN_MARKER
    if main and not marker.exists():
        write_run_marker(run_dir, cfg, command)
    if dataset is None:
        dataset = load_data(cfg)
    task_type = dataset.task_type
    metric = cfg.metric or default_metric(task_type)
    if metric not in metric_names(task_type):
        raise UserError(f"metric {metric!r} does not apply to {task_type}; choose one of "
                         f"{', '.join(metric_names(task_type))}")
    cfg.metric = metric
    log(f"data: {cfg.data_label}, {len(dataset)} molecules, {len(dataset.task_names)} {task_type} task(s)")
    if jobs > 1:
        _run_in_processes(cfg, run_dir, dataset, device, jobs, log)

    results: dict = {opt: {} for opt in cfg.optimizers}
    split_sizes = {}
    for seed in cfg.seed_list:
        if dist is None:
            data = split_for_seed(cfg, dataset, seed, run_dir)
        else:  # rank 0 writes the split file before the others read it
            if dist.is_main:
                data = split_for_seed(cfg, dataset, seed, run_dir)
            dist.barrier()
            if not dist.is_main:
                data = split_for_seed(cfg, dataset, seed, run_dir, write=False)
        split_sizes[seed] = [len(data.train), len(data.val), len(data.test)]
        runners = {}
        for opt in cfg.optimizers:
            seed_dir = run_dir / opt / f"seed{seed}"
            res = _is_done(cfg, seed_dir)
            if res is not None:
                results[opt][seed] = res
                continue
            runners[opt] = SeedRun(cfg, opt, seed, data, seed_dir, device, progress=progress, log=log, dist=dist)
        limit = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, stop_after_epochs)
        for epoch in range(1, limit + 1):
            for opt, runner in runners.items():
                if not runner.finished:
                    results[opt][seed] = runner.run(stop_after_epochs=epoch)
        for opt in runners:
            res = results[opt][seed]
            if res.get("finished"):
                test = res["test"].get(metric, math.nan)
                log(f"{opt:>12} seed {seed}: test {metric} {test:.4f} (best epoch {res['best_epoch']}/"
                    f"{res['epochs_run']}), {res['train_seconds_per_epoch']:.2f} s/epoch, "
                    f"{res['passes_per_epoch']:.0f} passes/epoch, {res['num_parameters']:,} parameters")
            else:
                log(f"{opt:>12} seed {seed}: stopped after epoch {res['epochs_run']}; resume to continue")
        if main:
            _write_outputs(cfg, run_dir, dataset, results, split_sizes, metric, device, command, plots=False)
    return _write_outputs(cfg, run_dir, dataset, results, split_sizes, metric, device, command, plots=True,
                          write=main)


def _write_outputs(cfg, run_dir, dataset, results, split_sizes, metric, device, command, plots: bool,
                   write: bool = True) -> dict:
    task_type = dataset.task_type
    summary = summarize(results, task_type)
    payload = {
        "graphsam_ext_version": __version__,
        "command": command,
        "protocol": protocol_text(cfg, metric),
        "metric": metric,
        "higher_is_better": HIGHER_IS_BETTER[metric],
        "config": cfg.to_dict(),
        "data": {
            "label": cfg.data_label,
            "task_type": task_type,
            "task_names": list(dataset.task_names),
            "num_molecules": len(dataset),
            "split_sizes": {str(k): v for k, v in split_sizes.items()},
            "summary": json.loads(json.dumps(getattr(dataset, "summary", {}), default=str)),
            "featurizer": dataset.featurizer.config(),
        },
        "environment": environment(device),
        "summary": summary,
        "results": {
            opt: {str(seed): {k: v for k, v in res.items() if k != "history"} for seed, res in by_seed.items()}
            for opt, by_seed in results.items()
        },
    }
    if not write:
        return payload
    write_metrics_csv(results, run_dir / "metrics.csv", task_type)
    if plots:
        payload["plots"] = [p.name for p in _plots(results, metric, run_dir)]
    (run_dir / "results.json").write_text(json.dumps(finite_or_none(payload), indent=2))
    return payload


def _plots(results, metric, run_dir):
    from graphsam_ext.train.plots import plot_validation

    try:
        return plot_validation(results, metric, run_dir)
    except ImportError:  # matplotlib is an optional extra; the numbers are in results.json anyway
        return []
