"""``graphsam train`` and ``graphsam compare``: one or several optimizers over seeds, identical
splits, a results table, results files and plots."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from graphsam_ext.cli.common import logger, setup_execution, show_progress
from graphsam_ext.cli.options import (RESUMABLE_OVERRIDES, add_config_options, add_execution_options,
                                      config_from_args, flag_of, given_config_options)
from graphsam_ext.errors import UserError

DESCRIPTIONS = {
    "train": ("train one optimizer over several seeds",
              "Train the molecular graph transformer with an optimizer over several seeds; writes checkpoints and "
              "results.json into the run directory. chemprop's options -i/--data-path, -s/--smiles-columns, "
              "--target-columns, -t/--task-type, --split-type, --split-sizes, -o/--output-dir, --epochs and "
              "--num-replicates are accepted as they are."),
    "compare": ("compare optimizers on identical splits and seeds",
                "Train several optimizers on identical splits, initial weights and batch orders; print a table of "
                "test metrics, seconds and forward/backward passes per epoch; write results.json, metrics.csv "
                "and plots."),
}


def add_parsers(sub) -> None:
    for command, (short, description) in DESCRIPTIONS.items():
        p = sub.add_parser(command, help=short, description=description)
        add_config_options(p, command)
        add_execution_options(p, num_threads=1 if command == "compare" else None)
        _add_launch_options(p)
        p.set_defaults(handler=run)


def _add_launch_options(parser) -> None:
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train up to N (optimizer, seed) runs at once, each in its own process with "
                             "--num-threads threads (default 1: one process, the runs take turns epoch by epoch "
                             "so that load hits every optimizer alike; timings are fairest that way)")
    g = parser.add_argument_group("distributed (torchrun; see docs/scaling.md)")
    g.add_argument("--nproc-per-node", type=int, metavar="N",
                   help="data-parallel training over N processes on this machine (one per GPU with --device cuda), "
                        "started with torchrun; --batch-size stays the global batch (default: one process)")
    g.add_argument("--nnodes", metavar="N", help="torchrun --nnodes: machines taking part (default 1)")
    g.add_argument("--node-rank", type=int, metavar="K", help="torchrun --node-rank: this machine's index")
    g.add_argument("--master-addr", metavar="HOST", help="torchrun --master-addr: the address of node 0")
    g.add_argument("--master-port", type=int, metavar="PORT", help="torchrun --master-port: a free port on node 0")


def _wait_for_marker(run_dir: Path, timeout: float = 600.0) -> None:
    """On a machine other than node 0: wait until node 0 has prepared the shared run directory."""
    from graphsam_ext.train.experiment import RUN_MARKER

    deadline = time.monotonic() + timeout
    while not (run_dir / RUN_MARKER).is_file():
        if time.monotonic() > deadline:
            raise UserError(f"--output-dir {run_dir}: node 0 has not written {RUN_MARKER} there within "
                            f"{timeout:.0f} s; start node 0 too, and use a directory every machine sees")
        time.sleep(1.0)


def _launch(args) -> int:
    """Start ``torchrun`` with ``--nproc-per-node`` workers. The run directory and its
    config.json are made here, once; every worker then runs ``--resume`` on it (which starts a
    fresh run when there is nothing to resume yet), so all of them train the same configuration."""
    import os
    import subprocess

    from graphsam_ext.train.distributed import torchrun_command
    from graphsam_ext.train.experiment import write_run_marker

    command = args.command
    multi_node = args.nnodes is not None and str(args.nnodes) not in ("1", "1:1")
    if multi_node and not args.resume and not args.output_dir:
        raise UserError("--nnodes: pass the same --output-dir on every machine, on a filesystem they all see "
                        "(checkpoints are written by rank 0 and read by every rank on resume)")
    if args.resume:
        _, run_dir = _resume_config(args)
        overrides = []
        for key in RESUMABLE_OVERRIDES:
            if getattr(args, key, None) is not None:
                overrides += [flag_of(key), str(getattr(args, key))]
    else:
        cfg = config_from_args(args, command)
        _check_data_path(cfg)
        run_dir = Path(args.output_dir) if args.output_dir else _new_run_dir(command, cfg.data_label)
        if args.node_rank in (None, 0):
            _prepare_output_dir(run_dir, args.overwrite)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_run_marker(run_dir, cfg, ["graphsam", *sys.argv[1:]])
        else:
            _wait_for_marker(run_dir)
        overrides = []
    worker = [command, "--resume", str(run_dir), *overrides, "--device", args.device]
    if args.num_threads is not None:
        worker += ["--num-threads", str(args.num_threads)]
    if args.quiet:
        worker.append("--quiet")
    cmd = torchrun_command(worker, args.nproc_per_node, nnodes=args.nnodes, node_rank=args.node_rank,
                           master_addr=args.master_addr, master_port=args.master_port)
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=os.environ.copy())


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
        raise UserError(f"--output-dir {path} exists and is not a directory; choose another --output-dir")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UserError(
                f"output directory {path} already exists and is not empty; pass --overwrite to replace it, "
                f"--resume {path} to continue it, or choose another --output-dir"
            )
        if not (path / RUN_MARKER).is_file():
            raise UserError(
                f"--overwrite: {path} does not look like a graphsam run directory (no {RUN_MARKER}); refusing to "
                "delete it, choose another --output-dir"
            )
        shutil.rmtree(path)


def _resume_config(args):
    from graphsam_ext.train import TrainConfig
    from graphsam_ext.train.experiment import RUN_MARKER

    run_dir = Path(args.resume)
    marker = run_dir / RUN_MARKER
    if not marker.is_file():
        raise UserError(f"--resume {run_dir}: no {RUN_MARKER} there; pass the directory of an earlier graphsam run")
    stored = json.loads(marker.read_text())["config"]
    changed = [name for name in given_config_options(args) if name not in RESUMABLE_OVERRIDES]
    if args.output_dir is not None or args.overwrite:
        changed.append("output_dir")
    if changed:
        raise UserError(
            f"--resume reuses the run's own settings; these options cannot change: "
            f"{', '.join(flag_of(k) if k != 'output_dir' else '--output-dir' for k in changed)} (only "
            f"{', '.join(flag_of(o) for o in RESUMABLE_OVERRIDES)} may)"
        )
    for key in RESUMABLE_OVERRIDES:
        if getattr(args, key, None) is not None:
            stored[key] = getattr(args, key)
    return TrainConfig.from_dict(stored), run_dir


def _check_data_path(cfg) -> None:
    if cfg.data_path is not None and not Path(cfg.data_path).is_file():
        raise UserError(f"--data-path: {cfg.data_path} does not exist or is not a file")


def run(args) -> int:
    from graphsam_ext.train import format_table, run_experiment
    from graphsam_ext.train.experiment import load_data
    from graphsam_ext.train.loop import build_model

    from graphsam_ext.train.distributed import from_environment

    command = args.command
    if args.nproc_per_node is not None:
        if args.jobs != 1:
            raise UserError("--jobs N runs separate single-process trainings; --nproc-per-node makes one "
                            "data-parallel run: use one of them")
        return _launch(args)
    device = setup_execution(args)
    dist = from_environment(device)  # a torchrun worker of a data-parallel run
    main = dist is None or dist.is_main
    if dist is not None:
        device = dist.device
    if args.resume:
        cfg, run_dir = _resume_config(args)
    else:
        cfg = config_from_args(args, command)
        _check_data_path(cfg)
        run_dir = Path(args.output_dir) if args.output_dir else _new_run_dir(command, cfg.data_label)
        if dist is not None:
            raise UserError("a torchrun worker needs the run directory prepared once: start it with graphsam "
                            f"{command} --nproc-per-node N (or pass --resume DIR of a prepared run)")
        _prepare_output_dir(run_dir, args.overwrite)
    log = logger(args) if main else (lambda msg: None)
    if main:  # rank 0 featurizes (and fills the cache) before the other ranks read it
        dataset = load_data(cfg)
    if dist is not None:
        dist.barrier()
        if not main:
            dataset = load_data(cfg)
    _report_data(dataset, log)
    n_params = build_model(cfg, dataset).num_parameters()
    processes = "" if dist is None else f" x {dist.world_size} processes"
    log(f"model: {n_params:,} parameters; optimizers: {', '.join(cfg.optimizers)}; seeds: {cfg.seed_list}; "
        f"device: {device}{processes}; run directory: {run_dir}")
    try:
        results = run_experiment(cfg, run_dir, device, progress=show_progress(args) and main, log=log,
                                 command=["graphsam", *sys.argv[1:]], dataset=dataset, dist=dist, jobs=args.jobs)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: graphsam {command} --resume {run_dir}", file=sys.stderr)
        return 130
    if not main:
        return 0
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
