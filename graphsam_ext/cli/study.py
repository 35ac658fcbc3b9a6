"""``graphsam study``: the resumable grid of (dataset x protocol x seed x optimizer) cells and its
report. The training options of ``graphsam train`` are passed through (generated from
TrainConfig by ``add_config_options``), except those the grid itself sets."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from graphsam_ext.cli.common import logger, setup_execution, show_progress
from graphsam_ext.cli.options import add_config_options
from graphsam_ext.errors import UserError

DESCRIPTION = (
    "Train a grid of cells, one optimizer on one seed of one dataset under one split protocol each, into --out: "
    "every cell's result file is written as soon as it finishes, so an interrupted study resumes where it stopped "
    "and skips finished cells, and the grid can be spread over several invocations (the training settings are "
    "stored in --out/study.json at the first one and reused). Every optimizer of a (dataset, protocol, seed) "
    "shares its split, initial weights and batch order. At the end (or with --report alone) the finished cells "
    "are aggregated into --out/report.md, report.json and plots. With --cosine, instead of the grid: one dataset, "
    "protocol and seed, each optimizer trained while the cosine between its perturbation direction and the exact "
    "SAM perturbation gradient is measured on the side (graphsam_ext.study.cosine)."
)
# TrainConfig fields the grid sets, and the study's own option that replaces each
GRID_FIELDS = {"dataset": "--datasets", "data_path": "--data-path", "split": "--protocols",
               "optimizers": "--optimizers", "seeds": "--seeds", "first_seed": "--seeds", "epochs": "--epochs",
               "patience": "--patience"}


class _PassThrough:
    """Stands in for the parser while ``add_config_options`` adds its options: keeps the TrainConfig
    options the grid does not set, and drops the grid's and the run-directory options."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.kept: list[str] = []

    def add_argument_group(self, title, *args, **kwargs):
        return _Group(self, title)


class _Group:
    def __init__(self, owner: _PassThrough, title: str):
        self.owner, self.title, self.group = owner, title, None

    def add_argument(self, *flags, **kwargs):
        dest = kwargs.get("dest")
        if dest is None or dest in GRID_FIELDS:
            return None
        if self.group is None:
            self.group = self.owner.parser.add_argument_group(f"training: {self.title}")
        self.owner.kept.append(dest)
        return self.group.add_argument(*flags, **kwargs)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: a seed is a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--seeds: a seed is a non-negative integer, got {text!r}")
    return value


def _positive(flag):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag}: a positive integer, got {text!r}")
        return value

    return parse


GRID_OUT, COSINE_OUT = "runs/study", "runs/cosine"


def add_parser(sub, add_execution_options) -> None:
    from graphsam_ext.study.cosine import COSINE_OPTIMIZERS
    from graphsam_ext.study.grid import (DATASETS, DEFAULT_SEEDS, PROTOCOLS, STUDY_EPOCHS, STUDY_PATIENCE,
                                         available_optimizers)

    p = sub.add_parser("study", help="a resumable grid of datasets x optimizers x seeds x protocols, and its report",
                       description=DESCRIPTION, allow_abbrev=False)
    g = p.add_argument_group("grid")
    g.add_argument("--datasets", nargs="+", metavar="NAME", default=None,
                   help=f"MoleculeNet datasets; of {', '.join(DATASETS)} (default all six, or none when --data-path "
                        "is given)")
    g.add_argument("--data-path", nargs="+", metavar="CSV", default=None, dest="study_data_paths",
                   help="CSV files as further datasets, each named by its file name without .csv (their columns: "
                        "--smiles-column, --target-columns, --task-type)")
    g.add_argument("--optimizers", nargs="+", metavar="NAME", default=None,
                   help=f"optimizers (default: {' '.join(available_optimizers())})")
    g.add_argument("--seeds", nargs="+", type=_seed, metavar="K", default=None,
                   help="seeds; each sets the split (both protocols), initial weights and batch order (default "
                        f"{' '.join(str(s) for s in DEFAULT_SEEDS)})")
    g.add_argument("--protocols", nargs="+", metavar="NAME", default=None,
                   help="random (random 80/10/10, a different split per seed) and/or scaffold (balanced scaffold "
                        f"80/10/10) (default: {' '.join(PROTOCOLS)})")
    g.add_argument("--epochs", type=_positive("--epochs"), metavar="N", default=None,
                   help=f"maximum epochs per cell (default {STUDY_EPOCHS}, the paper's; a study's later invocations "
                        "reuse its stored value; with --cosine the graphsam train default)")
    g.add_argument("--patience", type=_positive("--patience"), metavar="N", default=None,
                   help=f"early stop after N epochs without validation improvement (default {STUDY_PATIENCE}; with "
                        "--cosine none: every epoch is trained)")
    g.add_argument("--out", metavar="DIR", default=None,
                   help=f"the study directory (default {GRID_OUT}; with --cosine {COSINE_OUT})")
    g.add_argument("--report", action="store_true",
                   help="only aggregate the cells already in --out into report.md and plots (with --cosine: the "
                        "measured rows into cosine.csv, cosine.png and summary.md); train nothing")
    c = p.add_argument_group("cosine (instead of the grid)")
    c.add_argument("--cosine", action="store_true",
                   help="train each of --optimizers (default: " + " ".join(COSINE_OPTIMIZERS) + ") on one dataset "
                        "(default esol), protocol (default scaffold) and seed (default 0), measuring at every --cosine-every-th step "
                        "the cosine between its perturbation direction and the exact gradient of the step's batch "
                        "(computed on the side; the training run is unchanged); writes --out/cosine.csv, cosine.png "
                        "and summary.md. An optimizer finished in --out is skipped")
    c.add_argument("--cosine-every", type=_positive("--cosine-every"), metavar="N", default=None,
                   help="with --cosine: measure every N-th step (default 1: every step)")
    passthrough = _PassThrough(p)
    add_config_options(passthrough, "train")
    add_execution_options(p, num_threads=1)
    p.set_defaults(handler=run, study_passthrough=tuple(passthrough.kept))


def _given(args) -> dict:
    given = {name: getattr(args, name) for name in args.study_passthrough if getattr(args, name) is not None}
    for name in ("epochs", "patience"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    return given


def _plan(args):
    from graphsam_ext.study.grid import (DATASETS, DEFAULT_SEEDS, PROTOCOLS, StudyPlan, available_optimizers,
                                         load_study_file, settings_given_from)

    out = Path(args.out or GRID_OUT)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another --out")
    stored = load_study_file(out)
    settings = settings_given_from(stored.get("settings", {}), _given(args))
    csvs = args.study_data_paths or []
    data_paths = {}
    for csv in csvs:
        label = Path(csv).stem
        if label in data_paths:
            raise UserError(f"--data-path: two files are named {label}.csv; rename one (a dataset is named by its "
                            "file)")
        data_paths[label] = csv
    datasets = args.datasets if args.datasets is not None else ([] if csvs else list(DATASETS))
    return StudyPlan(
        out=out, datasets=[d.strip().lower() for d in datasets], data_paths=data_paths,
        protocols=args.protocols or list(PROTOCOLS), seeds=args.seeds or list(DEFAULT_SEEDS),
        optimizers=args.optimizers or available_optimizers(), settings=settings,
    )


def _report(out: Path) -> int:
    from graphsam_ext.study.report import build_report

    payload = build_report(out)
    counts = payload["counts"]
    print(f"report: {out / 'report.md'} ({counts['finished']} finished cells, {counts['finished_of_requested']} of "
          f"{counts['requested']} requested; test: {payload['test']})")
    return 0


# the study's own options, by flag
DESTS = {"--datasets": "datasets", "--data-path": "study_data_paths", "--optimizers": "optimizers", "--seeds": "seeds",
         "--protocols": "protocols", "--cosine-every": "cosine_every"}


def _check_report_only(args, flags, what: str, out: Path, command: str) -> None:
    """--report trains nothing: a UserError naming the given ``flags`` and training options, or
    saying that ``out`` is not there yet (``command`` makes it)."""
    given = [flag for flag in flags if getattr(args, DESTS[flag]) is not None]
    given += [f"--{name.replace('_', '-')}" for name in _given(args)]
    if given:
        raise UserError(f"{what}; drop {', '.join(given)}")
    if not out.is_dir():
        raise UserError(f"--out {out}: no such study directory; run `{command}` first")


def _one(flag: str, values, default):
    if values is None:
        return default
    if len(values) != 1:
        raise UserError(f"--cosine measures one dataset, protocol and seed; give one value to {flag}, not "
                        f"{' '.join(str(v) for v in values)}")
    return values[0]


def _cosine(args) -> int:
    from graphsam_ext.study.cosine import COSINE_OPTIMIZERS, cosine_config, run_cosine, write_outputs
    from graphsam_ext.study.grid import PROTOCOLS, check_protocols, study_command

    out = Path(args.out or COSINE_OUT)
    if args.report:
        _check_report_only(args, ("--datasets", "--data-path", "--seeds", "--protocols", "--cosine-every"),
                           "--report with --cosine redraws what is in --out and trains nothing", out,
                           f"graphsam study --cosine --out {out}")
        return _cosine_written(out, write_outputs(out, args.optimizers))
    given = _given(args)
    if args.datasets is not None and args.study_data_paths is not None:
        raise UserError("--cosine measures one dataset: give --datasets NAME or --data-path CSV, not both")
    if args.study_data_paths is not None:
        given["data_path"] = _one("--data-path", args.study_data_paths, None)
    else:
        given["dataset"] = _one("--datasets", args.datasets, "esol").strip().lower()
    protocol = check_protocols([_one("--protocols", args.protocols, "scaffold")])[0]
    given.update(split=PROTOCOLS[protocol], first_seed=_one("--seeds", args.seeds, 0), seeds=1,
                 optimizers=args.optimizers or list(COSINE_OPTIMIZERS))
    cfg = cosine_config(given)
    device = setup_execution(args)
    log = logger(args)
    summary = run_cosine(cfg, out, args.cosine_every or 1, device, log=log, progress=show_progress(args),
                         command=study_command())
    return _cosine_written(out, summary)


def _cosine_written(out: Path, summary: dict) -> int:
    print(f"cosine: {out / 'cosine.csv'}, {out / 'cosine.png'}, {out / 'summary.md'} ({', '.join(summary)})")
    return 0


def _interrupt(signum, frame):
    """SIGTERM (``kill``, a job scheduler's stop) ends a grid invocation like Ctrl-C: the
    invocation records its end, finished cells and every cell's last epoch are kept."""
    raise KeyboardInterrupt


def run(args) -> int:
    from graphsam_ext.study.grid import run_study, study_command

    if args.cosine:
        return _cosine(args)
    if args.cosine_every is not None:
        raise UserError("--cosine-every applies to --cosine only; add --cosine or drop it")
    out = Path(args.out or GRID_OUT)
    if args.report:
        _check_report_only(args, ("--datasets", "--data-path", "--optimizers", "--seeds", "--protocols"),
                           "--report aggregates the cells already in --out and trains nothing", out,
                           f"graphsam study --out {out}")
        return _report(out)
    plan = _plan(args)
    device = setup_execution(args)
    log = logger(args)
    cells = plan.cells()
    log(f"study {plan.out}: {len(cells)} cells = {len(plan.labels)} dataset(s) x {len(plan.protocols)} protocol(s) "
        f"x {len(plan.seeds)} seed(s) x {len(plan.optimizers)} optimizer(s); up to {plan.settings['epochs']} epochs, "
        f"patience {plan.settings['patience']}; device {device}")
    # signal handlers live in the main thread only; None: a handler set outside Python, kept as it is
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        done = run_study(plan, device, log=log, progress=show_progress(args), command=study_command())
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished cells are kept. Continue with the same command (or: graphsam study --out "
              f"{out} ...), or aggregate with: graphsam study --report --out {out}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log(f"{len(done['finished'])} cell(s) trained, {len(done['skipped'])} already finished")
    return _report(out)
