#!/usr/bin/env python3
"""chemprop's default D-MPNN beside `graphsam train` on identical splits and the same epochs.

Thin wrapper of graphsam_ext.peers.chemprop_bench (see its docstring and docs/benchmarks.md,
"chemprop side by side"); `make bench-chemprop BENCH_CHEMPROP_ARGS="..."` runs it. Example:

    .venv/bin/python scripts/bench_chemprop.py --datasets esol --splits balanced-scaffold --seeds 0 --epochs 2
"""
import sys

from graphsam_ext.peers.chemprop_bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
