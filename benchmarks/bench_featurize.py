"""Featurizing tox21 from scratch vs loading it from the featurization cache.

    make bench BENCH_ARGS="-k featurize"         # pytest-benchmark table (min / median / mean)
    .venv/bin/python benchmarks/bench_featurize.py  # both times and the ratio, printed

The cache must make a second run at least 10x faster than featurizing; the ratio is recorded in
the benchmark's extra_info (and printed by the script form), never asserted.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from graphsam_ext.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GRAPHSAM_DATA_DIR") or ROOT.parent / "shared" / "data" / "moleculenet")
DATASET = "tox21"
_timings: dict[str, float] = {}


def _from_scratch():
    return load_dataset(DATASET, data_dir=DATA_DIR, cache_dir=False)


def _from_cache(cache_dir):
    return load_dataset(DATASET, data_dir=DATA_DIR, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    pytest.importorskip("rdkit")
    if not (DATA_DIR / f"{DATASET}.csv").is_file():
        pytest.skip(f"{DATASET}.csv not found in {DATA_DIR}")
    cache_dir = tmp_path_factory.mktemp("featurize-cache")
    _from_cache(cache_dir)
    return cache_dir


def test_featurize_tox21_from_scratch(benchmark, warm_cache):
    benchmark.group = "featurize tox21"
    dataset = benchmark.pedantic(_from_scratch, rounds=1, iterations=1)
    _timings["scratch"] = benchmark.stats.stats.min if benchmark.stats else float("nan")
    benchmark.extra_info["molecules"] = len(dataset)


def test_featurize_tox21_from_cache(benchmark, warm_cache):
    benchmark.group = "featurize tox21"
    dataset = benchmark.pedantic(_from_cache, args=(warm_cache,), rounds=5, iterations=1)
    assert dataset.summary["cached"] is True
    cached = benchmark.stats.stats.min if benchmark.stats else float("nan")
    if "scratch" in _timings:
        benchmark.extra_info["scratch_s"] = _timings["scratch"]
        benchmark.extra_info["speedup_vs_scratch"] = _timings["scratch"] / cached


def main() -> int:
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        dataset = _from_cache(cache_dir)
        scratch = time.perf_counter() - start
        cached = []
        for _ in range(5):
            start = time.perf_counter()
            again = _from_cache(cache_dir)
            cached.append(time.perf_counter() - start)
        assert again.summary["cached"] is True
    best = min(cached)
    print(f"{DATASET}: {len(dataset)} molecules, {dataset.x.shape[0]} atoms, {dataset.edge_index.shape[1]} edges")
    print(f"from scratch: {scratch:.2f} s (featurize + write cache)")
    print(f"from cache:   {best * 1000:.1f} ms (best of 5; median {sorted(cached)[2] * 1000:.1f} ms)")
    print(f"speedup:      {scratch / best:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
