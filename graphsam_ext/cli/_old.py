"""The ``graphsam`` command line: train, compare, predict, bench.

Heavy imports (the data pipeline and RDKit, matplotlib, tqdm) happen inside the subcommands, so
``graphsam --version`` and ``graphsam --help`` work on an installation without RDKit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Defaults of the training options per subcommand. `compare` (what `make run` runs) uses a
# smaller model and budget: Adam, SAM and GraphSAM on the embedded default data, three seeds,
# in about five minutes on two CPU cores.
TRAIN_DEFAULTS = dict(
    optimizers=["adam"], split="random", split_fractions=[0.8, 0.1, 0.1], seeds=3, first_seed=0, epochs=30,
    batch_size=32, patience=20, lr=1e-3, schedule="paper", warmup_epochs=2.0, decay_epochs=30.0,
    weight_decay=0.0, rho=0.05, beta=0.99, gamma=0.5, lam=1, sam_every=2, hidden=256, layers=4, heads=8,
    edge_hidden=64, dropout=0.1, ffn_multiplier=2, readout="mean", attention="bonds", num_workers=0,
)
COMPARE_DEFAULTS = dict(
    TRAIN_DEFAULTS, optimizers=["adam", "sam", "graphsam"], epochs=18, decay_epochs=18.0, hidden=64, layers=2,
    heads=4, edge_hidden=32, warmup_epochs=1.0,
)
# Options that may be changed when resuming a run (everything else comes from its config.json).
RESUMABLE_OVERRIDES = ("epochs", "patience", "num_workers")


class CLIError(Exception):
    """A user error: printed as ``graphsam: error: ...`` with exit status 2."""


# -- parser ---------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, num_threads: int | None = None) -> None:
    g = parser.add_argument_group("execution")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run: cpu, cuda, or auto (cuda when a GPU is visible; default auto)")
    if num_threads is None:
        threads_help = "CPU threads for torch (default: torch's own choice)"
    else:
        threads_help = (f"CPU threads for torch (default {num_threads}: the small default model gains little from "
                        "more, and OpenMP threads slow down many times over when other processes share the cores)")
    g.add_argument("--num-threads", type=int, default=num_threads, metavar="N", help=threads_help)
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-seed messages")


def _training_options(parser: argparse.ArgumentParser, defaults: dict, command: str) -> None:
    d = defaults
    data = parser.add_argument_group("data (neither --data nor --dataset: the embedded CHEMBL2321810 pIC50 set)")
    data.add_argument("--data", metavar="CSV", dest="data_path", help="a CSV file with a SMILES column and target columns")
    data.add_argument("--dataset", metavar="NAME",
                      help="a named dataset: bbbp, tox21, sider, clintox, esol, lipophilicity or default")
    data.add_argument("--smiles-column", metavar="COL", help="SMILES column of --data (default: a column named smiles)")
    data.add_argument("--target-columns", nargs="+", metavar="COL",
                      help="target columns of --data (default: every column except the SMILES column)")
    data.add_argument("--task-type", choices=("classification", "regression"),
                      help="override the task type inferred from the targets")
    data.add_argument("--data-dir", metavar="DIR",
                      help="directory holding the named datasets' CSV files (default: $GRAPHSAM_DATA_DIR, then the cache)")
    data.add_argument("--split", choices=("random", "scaffold", "balanced-scaffold"),
                      help=f"how to split train/val/test (default {d['split']}; scaffold is deterministic, "
                           "random and balanced-scaffold change with the seed)")
    data.add_argument("--split-fractions", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"),
                      help="split fractions, summing to 1 (default 0.8 0.1 0.1)")

    opt = parser.add_argument_group("optimization")
    if command == "train":
        opt.add_argument("--optimizer", metavar="NAME",
                         help="adam, adamw, sgd, sam, asam, sam-k, graphsam or graphsam-ref (default adam)")
    else:
        opt.add_argument("--optimizers", nargs="+", metavar="NAME",
                         help="optimizers to compare: adam adamw sgd sam asam sam-k graphsam graphsam-ref "
                              f"(default {' '.join(d['optimizers'])})")
    opt.add_argument("--lr", type=float, help=f"peak learning rate (default {d['lr']})")
    opt.add_argument("--init-lr", type=float, help="learning rate at the start of warm-up (default lr/10)")
    opt.add_argument("--final-lr", type=float, help="learning rate at the end of the decay (default lr/10)")
    opt.add_argument("--schedule", choices=("paper", "cosine", "constant"),
                     help=f"learning-rate schedule (default {d['schedule']}: warm-up, exponential decay, flat)")
    opt.add_argument("--warmup-epochs", type=float, help=f"warm-up length in epochs (default {d['warmup_epochs']})")
    opt.add_argument("--decay-epochs", type=float,
                     help=f"epoch at which the paper schedule reaches --final-lr (default {d['decay_epochs']})")
    opt.add_argument("--weight-decay", type=float, help=f"weight decay of the base optimizer (default {d['weight_decay']})")
    opt.add_argument("--rho", type=float, help=f"SAM / ASAM / GraphSAM neighbourhood size (default {d['rho']})")
    opt.add_argument("--beta", type=float, help=f"GraphSAM EMA smoothing of the perturbation direction (default {d['beta']})")
    opt.add_argument("--gamma", type=float, help=f"GraphSAM rho decay factor (default {d['gamma']})")
    opt.add_argument("--lam", type=int, help=f"GraphSAM: decay rho every LAM epochs (default {d['lam']})")
    opt.add_argument("--sam-every", type=int, help=f"the k of sam-k: a SAM step every k steps (default {d['sam_every']})")

    proto = parser.add_argument_group("protocol")
    proto.add_argument("--seeds", type=int, metavar="N", help=f"number of seeds (default {d['seeds']})")
    proto.add_argument("--first-seed", type=int, metavar="S", help="the first seed; seeds are S..S+N-1 (default 0)")
    proto.add_argument("--epochs", type=int, help=f"maximum epochs (default {d['epochs']})")
    proto.add_argument("--batch-size", type=int, help=f"molecules per batch (default {d['batch_size']})")
    proto.add_argument("--patience", type=int,
                       help=f"early stop after this many epochs without validation improvement (default {d['patience']})")
    proto.add_argument("--metric", choices=("roc_auc", "prc_auc", "rmse", "mae"),
                       help="validation metric for model selection (default roc_auc / rmse by task type)")
    proto.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0)")

    model = parser.add_argument_group("model")
    model.add_argument("--hidden", type=int, help=f"node state width (default {d['hidden']})")
    model.add_argument("--layers", type=int, help=f"transformer layers (default {d['layers']})")
    model.add_argument("--heads", type=int, help=f"attention heads (default {d['heads']})")
    model.add_argument("--edge-hidden", type=int, help=f"bond embedding width (default {d['edge_hidden']})")
    model.add_argument("--dropout", type=float, help=f"dropout (default {d['dropout']})")
    model.add_argument("--ffn-multiplier", type=int, help=f"feed-forward width over hidden (default {d['ffn_multiplier']})")
    model.add_argument("--readout", choices=("mean", "sum", "attention"), help=f"graph readout (default {d['readout']})")
    model.add_argument("--attention", choices=("bonds", "pairs"),
                       help="attend over bonds, or over atom pairs within --pair-distance with a learned distance "
                            f"bias (default {d['attention']})")
    model.add_argument("--pair-distance", metavar="K",
                       help="pairs mode: largest topological distance of a pair edge, or 'all' (default 3)")

    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", metavar="DIR",
                     help="run directory (default: a new directory under ./runs/); never overwritten without --overwrite")
    out.add_argument("--overwrite", action="store_true",
                     help="replace --output-dir when it already holds a graphsam run")
    out.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its last checkpoints (its settings are reused; only "
                          f"{', '.join('--' + o.replace('_', '-') for o in RESUMABLE_OVERRIDES)} may be changed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphsam",
        description="GraphSAM, SAM and Adam on molecular graph transformers: train, compare, predict, benchmark.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and how the native library was built")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train one optimizer over several seeds",
                       description="Train the molecular graph transformer with one optimizer over several seeds; "
                                   "writes checkpoints and results.json into the run directory.")
    _training_options(p, TRAIN_DEFAULTS, "train")
    _common(p)

    p = sub.add_parser("compare", help="compare optimizers on identical splits and seeds",
                       description="Train several optimizers on identical splits, initial weights and batch orders; "
                                   "print a table of test metrics, seconds and forward/backward passes per epoch; "
                                   "write results.json, metrics.csv and plots.")
    _training_options(p, COMPARE_DEFAULTS, "compare")
    _common(p, num_threads=1)

    p = sub.add_parser("predict", help="predict new SMILES with a trained model",
                       description="Predict the targets of new SMILES with a checkpoint (or every best.pt of a run "
                                   "directory, averaged). Invalid SMILES are reported per row.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a best.pt file or a run directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="CSV", help="CSV file with a SMILES column")
    src.add_argument("--smiles", nargs="+", metavar="SMILES", help="SMILES strings given on the command line")
    p.add_argument("--smiles-column", metavar="COL", help="SMILES column of --data (default: a column named smiles, else the first)")
    p.add_argument("--output", metavar="CSV",
                   help="where to write the predictions (default: <data>.predictions.csv, or stdout for --smiles)")
    p.add_argument("--overwrite", action="store_true", help="replace --output when it exists")
    p.add_argument("--batch-size", type=int, default=256, help="molecules per batch (default 256)")
    _common(p)

    p = sub.add_parser("bench", help="run the benchmark suites (pytest-benchmark)",
                       description="Run the benchmark suites with pytest; arguments after -- go to pytest.")
    p.add_argument("--path", metavar="DIR", default=None,
                   help="the benchmarks directory (default: ./benchmarks, else the one next to the package)")
    p.add_argument("--smoke", action="store_true", help="run each benchmark once without timing (a quick check)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments, after --")
    _common(p)
    return parser


# -- helpers --------------------------------------------------------------------------------------
def _setup_execution(args):
    import torch

    if args.num_threads is not None:
        if args.num_threads < 1:
            raise CLIError(f"--num-threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is visible to this torch build; use --device cpu or auto")
    return torch.device(args.device)


def _show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _logger(args):
    if args.quiet:
        return lambda msg: None
    try:
        from tqdm.auto import tqdm

        return lambda msg: tqdm.write(msg)
    except ImportError:
        return lambda msg: print(msg, flush=True)


def _config_from_args(args, defaults: dict, command: str):
    from graphsam_ext.train import TrainConfig

    values = dict(defaults)
    given = {k: v for k, v in vars(args).items() if v is not None}
    if command == "train" and "optimizer" in given:
        values["optimizers"] = [given.pop("optimizer")]
    for key in list(TrainConfig.__dataclass_fields__):
        if key in given:
            values[key] = given[key]
    if values.get("pair_distance") not in (None, "all"):
        try:
            values["pair_distance"] = int(values["pair_distance"])
        except ValueError:
            raise CLIError(f"--pair-distance must be a positive integer or 'all', got {values['pair_distance']!r}")
    if values.get("dataset") is not None:
        from graphsam_ext.data import DATASET_NAMES

        name = values["dataset"].strip().lower()
        if name not in DATASET_NAMES:
            raise CLIError(f"unknown --dataset {values['dataset']!r}; choose one of: {', '.join(DATASET_NAMES)}")
        values["dataset"] = name
    if values.get("data_path") is not None and not Path(values["data_path"]).is_file():
        raise CLIError(f"--data: {values['data_path']} does not exist or is not a file")
    try:
        return TrainConfig.from_dict({k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__})
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _new_run_dir(command: str, label: str) -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{label}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def _prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse to reuse a non-empty directory unless --overwrite, and even then only delete a
    directory that holds a graphsam run (its config.json), never arbitrary files."""
    from graphsam_ext.train.experiment import RUN_MARKER

    if path.exists() and not path.is_dir():
        raise CLIError(f"--output-dir {path} exists and is not a directory; choose another --output-dir")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise CLIError(
                f"output directory {path} already exists and is not empty; pass --overwrite to replace it, "
                f"--resume {path} to continue it, or choose another --output-dir"
            )
        if not (path / RUN_MARKER).is_file():
            raise CLIError(
                f"--overwrite: {path} does not look like a graphsam run directory (no {RUN_MARKER}); refusing to "
                "delete it, choose another --output-dir"
            )
        shutil.rmtree(path)


def _resume_config(args, command: str):
    from graphsam_ext.train import TrainConfig
    from graphsam_ext.train.experiment import RUN_MARKER

    run_dir = Path(args.resume)
    marker = run_dir / RUN_MARKER
    if not marker.is_file():
        raise CLIError(f"--resume {run_dir}: no {RUN_MARKER} there; pass the directory of an earlier graphsam run")
    stored = json.loads(marker.read_text())["config"]
    cli_only = {"device", "num_threads", "quiet", "resume", "overwrite", "command", "version"}
    changed = [k for k, v in vars(args).items() if v is not None and v is not False and k not in cli_only
               and k not in RESUMABLE_OVERRIDES]
    if changed:
        raise CLIError(
            f"--resume reuses the run's own settings; these options cannot change: "
            f"{', '.join('--' + k.replace('_', '-') for k in changed)} (only "
            f"{', '.join('--' + o.replace('_', '-') for o in RESUMABLE_OVERRIDES)} may)"
        )
    for key in RESUMABLE_OVERRIDES:
        if getattr(args, key, None) is not None:
            stored[key] = getattr(args, key)
    stored_cfg = TrainConfig.from_dict(stored)
    if command == "train" and len(stored_cfg.optimizers) != 1:
        raise CLIError(f"--resume {run_dir} is a compare run; resume it with `graphsam compare --resume`")
    return stored_cfg, run_dir


# -- subcommands ----------------------------------------------------------------------------------
def cmd_train_or_compare(args) -> int:
    from graphsam_ext.train import format_table, run_experiment
    from graphsam_ext.train.loop import build_model

    command = args.command
    device = _setup_execution(args)
    if args.resume:
        cfg, run_dir = _resume_config(args, command)
    else:
        cfg = _config_from_args(args, TRAIN_DEFAULTS if command == "train" else COMPARE_DEFAULTS, command)
        run_dir = Path(args.output_dir) if args.output_dir else _new_run_dir(command, cfg.data_label)
        _prepare_output_dir(run_dir, args.overwrite)
    log = _logger(args)
    from graphsam_ext.train.experiment import load_data

    dataset = load_data(cfg)
    _report_data(dataset, log)
    n_params = build_model(cfg, dataset).num_parameters()
    log(f"model: {n_params:,} parameters; optimizers: {', '.join(cfg.optimizers)}; seeds: {cfg.seed_list}; "
        f"device: {device}; run directory: {run_dir}")
    try:
        results = run_experiment(cfg, run_dir, device, progress=_show_progress(args), log=log,
                                 command=["graphsam", *sys.argv[1:]], dataset=dataset)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: graphsam {command} --resume {run_dir}", file=sys.stderr)
        return 130
    baseline = "adam" if "adam" in cfg.optimizers and len(cfg.optimizers) > 1 else None
    print(f"\n{results['data']['label']}: {results['protocol']}")
    print(format_table(results["summary"], results["data"]["task_type"], baseline))
    print(f"\nresults: {run_dir / 'results.json'}, per-epoch metrics: {run_dir / 'metrics.csv'}")
    if results.get("plots"):
        print("plots: " + ", ".join(str(run_dir / p) for p in results["plots"]))
    return 0


def _report_data(dataset, log) -> None:
    summary = getattr(dataset, "summary", {}) or {}
    skipped = summary.get("skipped", 0)
    msg = f"dataset: {len(dataset)} molecules kept"
    if skipped:
        msg += f", {skipped} invalid SMILES skipped"
    if summary.get("rdkit_version"):
        msg += f" (RDKit {summary['rdkit_version']})"
    log(msg)


def cmd_predict(args) -> int:
    from graphsam_ext.train.predict import find_checkpoints, predict_smiles, read_smiles_csv, write_predictions

    device = _setup_execution(args)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    checkpoints = find_checkpoints(args.checkpoint)
    if args.data:
        smiles, column = read_smiles_csv(args.data, args.smiles_column)
        output = Path(args.output) if args.output else Path(args.data).with_suffix(".predictions.csv")
    else:
        smiles, column = list(args.smiles), "smiles"
        output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.overwrite:
        raise CLIError(f"--output {output} already exists; pass --overwrite to replace it or choose another --output")
    pred = predict_smiles(smiles, checkpoints, device=device, batch_size=args.batch_size)
    if output is None:
        write_predictions(pred, sys.stdout, column)
    else:
        write_predictions(pred, output, column)
    if not args.quiet:
        print(f"{len(smiles)} rows predicted with {len(checkpoints)} checkpoint(s)"
              + (f"; written to {output}" if output else ""), file=sys.stderr)
    if pred.num_invalid:
        bad = [f"row {i + 1} ({s!r}): {e}" for i, (s, e) in enumerate(zip(pred.smiles, pred.errors)) if e]
        shown = "; ".join(bad[:10]) + (f"; ... {len(bad) - 10} more" if len(bad) > 10 else "")
        print(f"{pred.num_invalid} invalid SMILES (no prediction): {shown}", file=sys.stderr)
    return 0


def _benchmarks_dir(path: str | None) -> Path:
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = [Path("benchmarks"), Path(__file__).resolve().parent.parent / "benchmarks"]
    for c in candidates:
        if c.is_dir():
            return c
    raise CLIError(
        f"no benchmarks directory found (looked in {', '.join(str(c) for c in candidates)}); run from the "
        "repository root or pass --path"
    )


def cmd_bench(args) -> int:
    _setup_execution(args)
    bench_dir = _benchmarks_dir(args.path)
    extra = [a for a in args.pytest_args if a != "--"]
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q"]
    cmd += ["--benchmark-disable"] if args.smoke else ["--benchmark-columns=min,median,mean,rounds", "--benchmark-sort=name"]
    cmd += extra
    env = dict(os.environ)
    if args.num_threads is not None:
        env["OMP_NUM_THREADS"] = str(args.num_threads)
    if not args.quiet:
        print("running: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from graphsam_ext.info import describe

        print(describe())
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {"train": cmd_train_or_compare, "compare": cmd_train_or_compare, "predict": cmd_predict,
                "bench": cmd_bench}
    try:
        return handlers[args.command](args)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"graphsam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
