"""``graphsam bench``: the pytest-benchmark suites, or ``graphsam bench chemprop`` (our model and
chemprop's D-MPNN on identical split files, see ``graphsam_ext.peers.chemprop_bench``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from graphsam_ext.cli.common import setup_execution
from graphsam_ext.errors import UserError


def add_parser(sub, add_execution_options) -> None:
    p = sub.add_parser("bench", help="run the benchmark suites (pytest-benchmark), or `bench chemprop`",
                       description="Run the benchmark suites with pytest; arguments after -- go to pytest. "
                                   "`graphsam bench chemprop --help` compares our model with chemprop's on "
                                   "identical splits.")
    p.add_argument("--path", metavar="DIR", default=None,
                   help="the benchmarks directory (default: ./benchmarks, else the one next to the package)")
    p.add_argument("--smoke", action="store_true", help="run each benchmark once without timing (a quick check)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    add_execution_options(p)
    p.set_defaults(handler=run)


def _benchmarks_dir(path: str | None) -> Path:
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = [Path("benchmarks"), Path(__file__).resolve().parents[2] / "benchmarks"]
    for c in candidates:
        if c.is_dir():
            return c
    raise UserError(
        f"no benchmarks directory found (looked in {', '.join(str(c) for c in candidates)}); run from the "
        "repository root or pass --path"
    )


def run(args) -> int:
    setup_execution(args)
    bench_dir = _benchmarks_dir(args.path)
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q"]
    cmd += ["--benchmark-disable"] if args.smoke else ["--benchmark-columns=min,median,mean,rounds", "--benchmark-sort=name"]
    cmd += list(args.pytest_args)
    env = dict(os.environ)
    if args.num_threads is not None:
        env["OMP_NUM_THREADS"] = str(args.num_threads)
    if not args.quiet:
        print("running: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env=env)
