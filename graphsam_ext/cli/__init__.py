"""The ``graphsam`` command line: train, compare, predict, bench (one module per subcommand).

Heavy imports (the data pipeline and RDKit, matplotlib, tqdm) happen inside the subcommands, so
``graphsam --version`` and ``graphsam --help`` work on an installation without RDKit. A
``UserError`` (a mistake the user can fix) is printed as one line with exit status 2; any other
exception keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from graphsam_ext.cli import bench, predict, study, train
from graphsam_ext.cli.options import add_execution_options
from graphsam_ext.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphsam",
        description="GraphSAM, SAM and Adam on molecular graph transformers: train, compare, predict, benchmark.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and how the native library was built")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train.add_parsers(sub)
    predict.add_parser(sub, add_execution_options)
    bench.add_parser(sub, add_execution_options)
    study.add_parser(sub, add_execution_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "chemprop"]:
        from graphsam_ext.peers import chemprop_bench

        return chemprop_bench.main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from graphsam_ext.info import describe

        print(describe())
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (UserError, FileNotFoundError) as exc:
        print(f"graphsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
