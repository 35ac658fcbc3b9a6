"""The study grid: (dataset x split protocol x seed x optimizer) cells, each one optimizer trained
on one seed's split, written to its own file as soon as it finishes.

Study directory layout::

    study.json                                      the settings every cell shares, custom datasets' files
    invocations.jsonl                               a line at each invocation's start (the cells it asks
                                                    for) and end (CPU and wall seconds, cells finished)
    runs/<dataset>/<protocol>/seed<k>/              one run directory per (dataset, protocol, seed):
        config.json, splits/seed<k>.json            the split every optimizer of this seed uses
        <optimizer>/seed<k>/last.pt, best.pt, ...   SeedRun's files (resume state, selected model)
        <optimizer>/seed<k>/study_cpu.json          CPU / wall seconds spent on the cell so far
    cells/<dataset>/<protocol>/seed<k>/<optimizer>.json   the finished cell (result with epoch history)
    report.md, report.json, plots/                  written by the report

The optimizers of a (dataset, protocol, seed) share its run directory, hence its split; SeedRun
gives them the same initial weights and batch order, and they take turns epoch by epoch (each
with its own random stream, so the turns change no result), so that load changes on a shared
machine hit every optimizer alike. A cell whose file exists is skipped; an unfinished one resumes
from its ``last.pt`` exactly.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from graphsam_ext import __version__
from graphsam_ext.errors import UserError
from graphsam_ext.train.config import PREDATED_FIELDS, TrainConfig
from graphsam_ext.train.experiment import finite_or_none
from graphsam_ext.train.metrics import HIGHER_IS_BETTER, metric_names
from graphsam_ext.train.optimizers import OPTIMIZER_NAMES

DATASETS = ("bbbp", "tox21", "sider", "clintox", "esol", "lipophilicity")
# protocol name -> TrainConfig split
PROTOCOLS = {"random": "random", "scaffold": "balanced_scaffold"}
# the optimizers, all over base Adam; those this build lacks are left out at run time
STUDY_OPTIMIZERS = ("adam", "sam", "sam-k", "looksam", "ae-sam", "sam-one", "graphsam", "graphsam-ref")
BASELINE = "adam"
DEFAULT_SEEDS = (0, 1, 2)
STUDY_EPOCHS, STUDY_PATIENCE = 150, 20
# TrainConfig fields the grid sets per cell, and fields that do not change a result
AXIS_FIELDS = ("dataset", "data_path", "split", "optimizers", "seeds", "first_seed")
NEUTRAL_FIELDS = ("data_dir", "num_workers")
# fields that only apply to a CSV given with --data-path
CSV_FIELDS = ("smiles_column", "target_columns", "task_type")
STUDY_FILE, INVOCATIONS_FILE = "study.json", "invocations.jsonl"


def available_optimizers() -> list[str]:
    """The issue's optimizers that this build has, in the study's order."""
    return [name for name in STUDY_OPTIMIZERS if name in OPTIMIZER_NAMES]


def check_optimizers(names) -> list[str]:
    out = []
    for name in names:
        key = name.strip().lower().replace("_", "-")
        if key not in OPTIMIZER_NAMES:
            missing = [n for n in STUDY_OPTIMIZERS if n not in OPTIMIZER_NAMES]
            hint = f" ({', '.join(missing)} not in this build)" if missing else ""
            raise UserError(f"--optimizers: unknown optimizer {name!r}; choose from {', '.join(OPTIMIZER_NAMES)}"
                            f"{hint}")
        if key not in out:
            out.append(key)
    return out


def check_protocols(names) -> list[str]:
    out = []
    for name in names:
        if name not in PROTOCOLS:
            raise UserError(f"--protocols: unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)} (random: "
                            "random 80/10/10, a different split per seed; scaffold: balanced scaffold 80/10/10)")
        if name not in out:
            out.append(name)
    return out


def check_seeds(seeds) -> list[int]:
    out = []
    for s in seeds:
        if int(s) < 0:
            raise UserError(f"--seeds: seeds are non-negative integers, got {s}")
        if int(s) not in out:
            out.append(int(s))
    return out


@dataclass
class StudyPlan:
    """What one invocation trains: the axes, and the settings every cell shares."""

    out: Path
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    data_paths: dict = field(default_factory=dict)  # label -> CSV path, custom datasets
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    optimizers: list[str] = field(default_factory=available_optimizers)
    settings: dict = field(default_factory=dict)  # TrainConfig fields other than the axes

    def __post_init__(self):
        self.out = Path(self.out)
        for name in self.datasets:
            if name not in DATASETS:
                raise UserError(f"--datasets: unknown dataset {name!r}; choose from {', '.join(DATASETS)}, or give "
                                "a CSV file with --data-path")
        self.data_paths = {str(k): str(v) for k, v in self.data_paths.items()}
        clash = sorted(set(self.data_paths) & set(self.datasets))
        if clash:
            raise UserError(f"--data-path: a CSV named {clash[0]}.csv would share the cells of the MoleculeNet "
                            f"dataset {clash[0]}; rename the file")
        for path in self.data_paths.values():
            if not Path(path).is_file():
                raise UserError(f"--data-path: {path} does not exist or is not a file")
        self.protocols = check_protocols(self.protocols)
        self.seeds = check_seeds(self.seeds)
        self.optimizers = check_optimizers(self.optimizers)
        if not (self.datasets or self.data_paths):
            raise UserError("--datasets / --data-path: the study needs at least one dataset")
        for axis in ("protocols", "seeds", "optimizers"):
            if not getattr(self, axis):
                raise UserError(f"--{axis}: give at least one")
        shared = {f.name for f in fields(TrainConfig)} - set(AXIS_FIELDS)
        unknown = sorted(set(self.settings) - shared)
        if unknown:
            raise UserError(f"study settings: {unknown} are not shared training settings")
        self.settings = normalized_settings(self.settings)

    @property
    def labels(self) -> list[str]:
        return [*self.datasets, *self.data_paths]

    def cells(self) -> list[tuple[str, str, int, str]]:
        return [(d, p, s, o) for d in self.labels for p in self.protocols for s in self.seeds for o in self.optimizers]

    def config(self, label: str, protocol: str, seed: int, optimizers: list[str]) -> TrainConfig:
        """The TrainConfig of the cells of (label, protocol, seed)."""
        values = dict(self.settings)
        if label in self.data_paths:
            values["data_path"] = self.data_paths[label]
        else:
            values["dataset"] = label
            for name in CSV_FIELDS:
                values[name] = None
        values.update(split=PROTOCOLS[protocol], optimizers=list(optimizers), seeds=1, first_seed=seed)
        return TrainConfig.from_dict(values)


def normalized_settings(given: dict) -> dict:
    """Every shared TrainConfig field, the given values over the study's defaults, checked by
    TrainConfig and in the form it stores them."""
    values = {f.name: TrainConfig.default(f.name) for f in fields(TrainConfig)}
    values.update(epochs=STUDY_EPOCHS, patience=STUDY_PATIENCE)
    values.update(given)
    cfg = TrainConfig.from_dict(values).to_dict()
    return {k: v for k, v in cfg.items() if k not in AXIS_FIELDS}


def cell_path(out, label: str, protocol: str, seed: int, optimizer: str) -> Path:
    return Path(out) / "cells" / label / protocol / f"seed{seed}" / f"{optimizer}.json"


def run_dir_of(out, label: str, protocol: str, seed: int) -> Path:
    return Path(out) / "runs" / label / protocol / f"seed{seed}"


def write_json_atomic(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o)}")


def _differences(stored: dict, asked: dict) -> list[str]:
    """The result-changing settings where ``asked`` (normalized) differs from ``stored``; a field
    the stored study predates counts as its default."""
    defaults = normalized_settings({})
    return [k for k in asked if k not in NEUTRAL_FIELDS and asked[k] != stored.get(k, defaults[k])]


def _mismatch_error(stored: dict, asked: dict, differ: list[str]) -> UserError:
    shown = ", ".join(f"{k}: stored {stored.get(k)!r}, asked {asked[k]!r}" for k in differ)
    return UserError(f"--out already holds a study with other settings ({shown}); every cell of a study shares "
                     "them, so drop these options (the stored values are used) or choose another --out")


def settings_given_from(stored: dict, given: dict) -> dict:
    """The settings of an invocation on a study whose study.json holds ``stored``: the stored
    values, which ``given`` (the options set on this command line) must agree with, plus the
    given fields that do not change a result (data directory, workers)."""
    if not stored:
        return dict(given)
    merged = {k: v for k, v in stored.items() if k not in NEUTRAL_FIELDS}
    asked = normalized_settings({**merged, **given})
    differ = _differences(stored, asked)
    if differ:
        raise _mismatch_error(stored, asked, differ)
    return {**merged, **{k: v for k, v in given.items() if k in NEUTRAL_FIELDS}}


def load_study_file(out) -> dict:
    """study.json of ``out`` ({} when none), with a setting it predates filled in from PREDATED_FIELDS."""
    path = Path(out) / STUDY_FILE
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text())
    if stored.get("settings"):
        for name, value in PREDATED_FIELDS.items():
            stored["settings"].setdefault(name, value)
    return stored


def record_plan(plan: StudyPlan) -> None:
    """Check the plan against study.json (the shared settings, the custom datasets), writing it at
    a study's first invocation or when a new custom dataset joins. The requested cells go to the
    append-only invocations.jsonl instead, so that invocations running at the same time do not
    overwrite each other's."""
    path = plan.out / STUDY_FILE
    stored = load_study_file(plan.out)
    known = stored.get("data_paths", {})
    for label, csv in plan.data_paths.items():
        before = known.get(label)
        if before is not None and Path(before).resolve() != Path(csv).resolve():
            raise UserError(f"--data-path: the study in {plan.out} already has a dataset {label} read from {before}; "
                            "give that file or rename this one")
    if stored.get("settings"):
        differ = _differences(stored["settings"], plan.settings)
        if differ:
            raise _mismatch_error(stored["settings"], plan.settings, differ)
        if set(plan.data_paths) <= set(known):
            return
    write_json_atomic(path, {
        "graphsam_ext_version": __version__,
        "created": stored.get("created", time.strftime("%Y-%m-%d %H:%M:%S")),
        "settings": stored.get("settings") or {k: v for k, v in plan.settings.items() if k not in NEUTRAL_FIELDS},
        "data_paths": {**known, **plan.data_paths},
    })


def requested_cells(out) -> set:
    """Every cell some invocation of the study in ``out`` asked for (from invocations.jsonl)."""
    cells = set()
    for entry in read_invocations(out):
        grid = entry.get("grid")
        if entry.get("event") == "start" and grid:
            cells |= {(d, p, int(s), o) for d in grid["datasets"] for p in grid["protocols"] for s in grid["seeds"]
                      for o in grid["optimizers"]}
    return cells


def read_invocations(out) -> list[dict]:
    path = Path(out) / INVOCATIONS_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:  # a line cut short by a killed process
            continue
    return entries


def _load_cpu(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"cpu_seconds": 0.0, "wall_seconds": 0.0}


def _rdkit_version(dataset) -> str | None:
    summary = getattr(dataset, "summary", {}) or {}
    if summary.get("rdkit_version"):
        return summary["rdkit_version"]
    try:
        from graphsam_ext.data._rdkit import rdkit_version

        return rdkit_version()
    except ImportError:
        return None


class StopStudy(Exception):
    """Raised by an ``on_cell`` hook to end the invocation after a cell (the tests' interruption)."""


def run_study(plan: StudyPlan, device="cpu", *, log: Callable[[str], None] | None = None, progress: bool = False,
              command: list[str] | None = None, on_cell: Callable[[Path], None] | None = None) -> dict:
    """Train the plan's unfinished cells; returns {"finished": [...], "skipped": [...]} (cell paths).

    on_cell(path) is called after each cell file is written; raising :class:`StopStudy` there
    ends the invocation (the other cells keep their ``last.pt`` and resume next time).
    """
    import torch

    from graphsam_ext.train.experiment import RUN_MARKER, environment, load_data, split_for_seed
    from graphsam_ext.train.loop import SeedRun

    log = log or (lambda msg: None)
    device = torch.device(device)
    plan.out.mkdir(parents=True, exist_ok=True)
    record_plan(plan)
    started, cpu0, wall0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.process_time(), time.perf_counter()
    _append_invocation(plan.out, {"event": "start", "started": started, "command": command, "pid": os.getpid(),
                                  "grid": {"datasets": plan.labels, "protocols": plan.protocols, "seeds": plan.seeds,
                                           "optimizers": plan.optimizers}})
    done = {"finished": [], "skipped": []}
    status = "interrupted"
    try:
        for label in plan.labels:
            dataset = None
            for protocol in plan.protocols:
                for seed in plan.seeds:
                    pending = []
                    for opt in plan.optimizers:
                        path = cell_path(plan.out, label, protocol, seed, opt)
                        if path.is_file():
                            done["skipped"].append(path)
                        else:
                            pending.append(opt)
                    if not pending:
                        continue
                    cfg = plan.config(label, protocol, seed, pending)
                    if dataset is None:
                        dataset = load_data(cfg)
                        log(f"{label}: {len(dataset)} molecules, {len(dataset.task_names)} {dataset.task_type} "
                            "task(s)")
                    metric = cfg.metric or metric_names(dataset.task_type)[0]
                    if metric not in metric_names(dataset.task_type):
                        raise UserError(f"--metric {metric} does not apply to {label} ({dataset.task_type}); choose "
                                        f"one of {', '.join(metric_names(dataset.task_type))} or drop --metric")
                    cfg = replace(cfg, metric=metric)
                    run_dir = run_dir_of(plan.out, label, protocol, seed)
                    run_dir.mkdir(parents=True, exist_ok=True)
                    if not (run_dir / RUN_MARKER).exists():
                        write_json_atomic(run_dir / RUN_MARKER, {
                            "graphsam_ext_version": __version__, "config": cfg.to_dict(), "command": command,
                            "created": time.strftime("%Y-%m-%d %H:%M:%S")})
                    try:
                        data = split_for_seed(cfg, dataset, seed, run_dir)
                    except UserError as exc:
                        raise UserError(f"{label}, protocol {protocol}, seed {seed}: {exc}") from None
                    env = {**environment(device), "rdkit": _rdkit_version(dataset)}
                    _run_group(plan, cfg, label, protocol, seed, pending, data, run_dir, device, env, log,
                               progress, command, done, on_cell, SeedRun)
        status = "complete"
    except StopStudy:
        status = "stopped"
    finally:
        _append_invocation(plan.out, {
            "event": "end", "command": command, "pid": os.getpid(), "started": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu_seconds": time.process_time() - cpu0, "wall_seconds": time.perf_counter() - wall0,
            "cells_finished": len(done["finished"]), "cells_skipped": len(done["skipped"]), "status": status,
            "torch_threads": torch.get_num_threads(),
        })
    return done


def _run_group(plan, cfg, label, protocol, seed, pending, data, run_dir, device, env, log, progress, command, done,
               on_cell, seed_run_cls) -> None:
    """The pending optimizers of one (dataset, protocol, seed), taking turns epoch by epoch."""
    runners, cpu = {}, {}
    for opt in pending:
        seed_dir = run_dir / opt / f"seed{seed}"
        runners[opt] = seed_run_cls(cfg, opt, seed, data, seed_dir, device, progress=progress, log=log)
        cpu[opt] = _load_cpu(seed_dir / "study_cpu.json")
    for epoch in range(1, cfg.epochs + 1):
        for opt in list(runners):
            runner = runners[opt]
            c0, w0 = time.process_time(), time.perf_counter()
            result = runner.run(stop_after_epochs=epoch)
            cpu[opt]["cpu_seconds"] += time.process_time() - c0
            cpu[opt]["wall_seconds"] += time.perf_counter() - w0
            write_json_atomic(runner.out_dir / "study_cpu.json", cpu[opt])
            if not runner.finished:
                continue
            del runners[opt]
            path = cell_path(plan.out, label, protocol, seed, opt)
            write_json_atomic(path, finite_or_none(_cell_payload(cfg, label, protocol, seed, opt, data, result, cpu[opt],
                                                          env, command)))
            done["finished"].append(path)
            test = result.get("test", {}).get(cfg.metric, math.nan)
            log(f"cell {label}/{protocol}/seed{seed}/{opt}: test {cfg.metric} {test:.4f}, best epoch "
                f"{result['best_epoch']}/{result['epochs_run']}, {cpu[opt]['cpu_seconds']:.1f} CPU s")
            if on_cell is not None:
                on_cell(path)
        if not runners:
            return


def _cell_payload(cfg, label, protocol, seed, opt, data, result, cpu, env, command) -> dict:
    n_train = len(data.train)
    wall, cpu_epoch = result.get("train_seconds_per_epoch"), result.get("train_cpu_seconds_per_epoch")
    return {
        "cell": {"dataset": label, "protocol": protocol, "seed": seed, "optimizer": opt},
        "split": cfg.split,
        "task_type": data.task_type,
        "task_names": list(data.dataset.task_names),
        "metric": cfg.metric,
        "higher_is_better": HIGHER_IS_BETTER[cfg.metric],
        "num_molecules": len(data.dataset),
        "split_sizes": [n_train, len(data.val), len(data.test)],
        "molecules_per_second": n_train / wall if wall else None,
        "molecules_per_cpu_second": n_train / cpu_epoch if cpu_epoch else None,
        "selected_last_epoch": result["best_epoch"] == result["epochs_run"],
        "cpu_seconds": cpu["cpu_seconds"],
        "wall_seconds": cpu["wall_seconds"],
        "config": {**cfg.to_dict(), "optimizers": [opt]},
        "environment": env,
        "command": command,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "result": result,
    }


def _append_invocation(out: Path, entry: dict) -> None:
    """One line, in one write to a file opened for appending."""
    with open(out / INVOCATIONS_FILE, "a") as fh:
        fh.write(json.dumps(finite_or_none(entry)) + "\n")


def study_command(argv=None) -> list[str]:
    return ["graphsam", *(sys.argv[1:] if argv is None else argv)]
