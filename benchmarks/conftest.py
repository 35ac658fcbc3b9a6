"""Side-by-side reporting for the benchmark suites.

Benchmarks call ``report.add(group, name, benchmark, bytes_moved=..., baseline=...)`` after
``benchmark(...)``; at the end of the run a table per group gives each entry's median time, its
achieved bandwidth (bytes moved / median time) and its ratio to the group's baseline, all from
this one run. ``GRAPHSAM_BENCH_REPORT=path`` also writes the tables as Markdown to a file.
A benchmark that alternates several implementations inside each round passes each one's
``samples``, so their ratio comes from the same rounds.
"""
import contextlib
import os
import pathlib
import statistics
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Report:
    def __init__(self):
        self.rows = {}

    def add(self, group, name, benchmark, bytes_moved=None, extra=None, samples=None):
        """``samples``: seconds measured inside the benchmarked function (one part of each round),
        used instead of the benchmark's own round times."""
        stats = getattr(benchmark, "stats", None)
        if stats is None or not getattr(stats, "stats", None):
            return  # --benchmark-disable: the code ran once as a smoke test, nothing was timed
        median = stats.stats.median if samples is None else statistics.median(samples)
        row = {"name": name, "median_s": median}
        if bytes_moved is not None:
            row["GB/s"] = bytes_moved / median / 1e9
        row.update(extra or {})
        benchmark.extra_info.update({k: v for k, v in row.items() if k != "name"})
        self.rows.setdefault(group, []).append(row)

    def tables(self, baselines):
        out = []
        for group, rows in self.rows.items():
            base = next((r for r in rows if r["name"] == baselines.get(group)), None)
            keys = [k for k in rows[0] if k not in ("name", "median_s")]
            head = ["name", "median ms"] + keys + ([f"x {base['name']}"] if base else [])
            lines = [f"### {group}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in rows:
                cells = [r["name"], f"{r['median_s'] * 1e3:.3f}"]
                cells += [f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
                if base:
                    cells.append(f"{r['median_s'] / base['median_s']:.2f}")
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
        return "\n\n".join(out)


_REPORT = Report()
BASELINES = {}


@contextlib.contextmanager
def torch_threads(threads: str):
    """torch's intra-op threads set to ``threads`` (a number as text; empty: left as they are)
    while the block runs, restored after it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def report():
    return _REPORT


def pytest_terminal_summary(terminalreporter):
    if not _REPORT.rows:
        return
    text = _REPORT.tables(BASELINES)
    terminalreporter.write_sep("=", "side-by-side (median time; ratio to the group's baseline)")
    terminalreporter.write_line(text)
    path = os.environ.get("GRAPHSAM_BENCH_REPORT")
    if path:
        pathlib.Path(path).write_text(text + "\n")
