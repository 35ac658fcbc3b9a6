"""The study report: aggregates whatever cell files exist into report.md, report.json and plots.

For each (dataset, protocol): the test metric mean ± std per optimizer, seconds per epoch (wall
and CPU), molecules per second, forward/backward passes per epoch and the selected epochs (a cell
whose selected epoch is its last one is flagged: it had not converged); the paired difference of
each optimizer to Adam across the seeds both have, with its test. Then the paper's recovered
cells (another backbone), the throughput ratios beside the paper's, the finished cells out of the
grid, the CPU time spent and the software versions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from graphsam_ext.study import reference
from graphsam_ext.study.grid import (BASELINE, DATASETS, PROTOCOLS, STUDY_OPTIMIZERS, available_optimizers,
                                     load_study_file, read_invocations, requested_cells, write_json_atomic)
from graphsam_ext.study.stats import SIGN_FLIP, default_method, paired_test
from graphsam_ext.train.experiment import finite_or_none
from graphsam_ext.train.metrics import metric_names

LAST_EPOCH_FLAG = "!"


def load_cells(out) -> tuple[list[dict], list[str]]:
    """Every readable cell file under ``out/cells`` and the paths of unreadable ones."""
    cells, bad = [], []
    for path in sorted((Path(out) / "cells").glob("*/*/seed*/*.json")):
        try:
            cell = json.loads(path.read_text())
        except (OSError, ValueError):
            cell = None
        if not _is_cell(cell):
            bad.append(str(path))
            continue
        cells.append(cell)
    return cells, bad


def _is_cell(cell) -> bool:
    if not isinstance(cell, dict) or not isinstance(cell.get("cell"), dict):
        return False
    keys = ("dataset", "protocol", "seed", "optimizer")
    return all(k in cell["cell"] for k in keys) and isinstance(cell.get("result", {}).get("test"), dict) and \
        all(k in cell for k in ("metric", "task_type", "higher_is_better"))


def _order(names, preferred) -> list:
    return sorted(names, key=lambda n: (preferred.index(n) if n in preferred else len(preferred), str(n)))


def _mean_std(values) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan, len(vals)


def aggregate(cells: list[dict], method: str | None = None, baseline: str = BASELINE) -> dict:
    """{(dataset, protocol): group} with per-optimizer summaries and paired differences to the baseline."""
    method = method or default_method()
    groups: dict = {}
    for cell in cells:
        key = (cell["cell"]["dataset"], cell["cell"]["protocol"])
        groups.setdefault(key, []).append(cell)
    out = {}
    datasets, protocols = list(DATASETS), list(PROTOCOLS)
    for key in sorted(groups, key=lambda k: (datasets.index(k[0]) if k[0] in datasets else len(datasets), k[0],
                                              protocols.index(k[1]) if k[1] in protocols else len(protocols))):
        members = groups[key]
        metric = members[0]["metric"]
        task_type = members[0]["task_type"]
        higher = bool(members[0]["higher_is_better"])
        second = [m for m in metric_names(task_type) if m != metric][:1]
        by_opt: dict = {}
        for cell in members:
            by_opt.setdefault(cell["cell"]["optimizer"], {})[int(cell["cell"]["seed"])] = cell
        optimizers = {}
        for opt in _order(by_opt, list(STUDY_OPTIMIZERS)):
            seeds = by_opt[opt]
            res = [seeds[s]["result"] for s in sorted(seeds)]
            entry = {"seeds": sorted(seeds)}
            for name in (metric, *second):
                mean, std, n = _mean_std([r["test"].get(name) for r in res])
                entry[f"test_{name}"] = {"mean": mean, "std": std, "n": n}
            for k in ("train_seconds_per_epoch", "train_cpu_seconds_per_epoch", "passes_per_epoch",
                      "steps_per_epoch", "epochs_run"):
                entry[k] = _mean_std([r.get(k) for r in res])[0]
            entry["molecules_per_second"] = _mean_std([seeds[s].get("molecules_per_second") for s in seeds])[0]
            entry["molecules_per_cpu_second"] = _mean_std(
                [seeds[s].get("molecules_per_cpu_second") for s in seeds])[0]
            entry["selected_epochs"] = [
                {"seed": s, "best_epoch": seeds[s]["result"]["best_epoch"],
                 "epochs_run": seeds[s]["result"]["epochs_run"], "last": bool(seeds[s]["selected_last_epoch"])}
                for s in sorted(seeds)]
            entry["cpu_seconds"] = float(sum(seeds[s].get("cpu_seconds") or 0.0 for s in seeds))
            entry["commands"] = {s: seeds[s].get("command") for s in sorted(seeds)}
            optimizers[opt] = entry
        paired = {}
        if baseline in by_opt:
            for opt in optimizers:
                if opt != baseline:
                    paired[opt] = paired_difference(by_opt[opt], by_opt[baseline], metric, higher, method)
        out[key] = {"dataset": key[0], "protocol": key[1], "metric": metric, "second_metric": second,
                    "higher_is_better": higher, "task_type": task_type,
                    "split_sizes": members[0].get("split_sizes"), "num_molecules": members[0].get("num_molecules"),
                    "optimizers": optimizers, "paired": paired}
    return out


def paired_difference(cells: dict, base_cells: dict, metric: str, higher_is_better: bool, method: str) -> dict:
    """The optimizer's test metric minus the baseline's over the seeds both have ({seed: cell}),
    with the paired test, and the relative gain (positive = better than the baseline)."""
    seeds = sorted(set(cells) & set(base_cells))
    pairs = [(cells[s]["result"]["test"].get(metric), base_cells[s]["result"]["test"].get(metric)) for s in seeds]
    keep = [(s, a, b) for s, (a, b) in zip(seeds, pairs) if a is not None and b is not None]
    diffs = [a - b for _, a, b in keep]
    out = paired_test(diffs, method) if diffs else {"n": 0, "mean": math.nan, "std": math.nan, "t": math.nan,
                                                       "p": math.nan, "method": method}
    out["seeds"] = [s for s, _, _ in keep]
    base_mean = float(np.mean([b for _, _, b in keep])) if keep else math.nan
    sign = 1.0 if higher_is_better else -1.0
    out["gain_percent"] = sign * out["mean"] / abs(base_mean) * 100 if keep and base_mean else math.nan
    out["better"] = (out["mean"] > 0) == higher_is_better if keep and out["mean"] != 0 else None
    return out


def _fmt(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds:.0f} s)"


def _pm(stat: dict) -> str:
    if stat["n"] == 0:
        return "–"
    if stat["n"] == 1:
        return f"{_fmt(stat['mean'])} (1 seed)"
    return f"{_fmt(stat['mean'])} ± {_fmt(stat['std'])}"


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _group_section(group: dict, plots: dict) -> list[str]:
    metric = group["metric"]
    names = [metric, *group["second_metric"]]
    sizes = group.get("split_sizes") or ["?", "?", "?"]
    arrow = "higher is better" if group["higher_is_better"] else "lower is better"
    lines = [f"### {group['dataset']}, {group['protocol']} protocol", "",
             f"{group['num_molecules']} molecules, split {sizes[0]} / {sizes[1]} / {sizes[2]} (train / val / test) "
             f"for the first seed; model selected on validation {metric} ({arrow}).", ""]
    header = ["optimizer", "seeds", *[f"test {n}" for n in names], "wall s/epoch", "CPU s/epoch", "molecules/s",
              "passes/epoch", "selected epoch / epochs run"]
    rows = []
    for opt, e in group["optimizers"].items():
        selected = ", ".join(f"{s['best_epoch']}/{s['epochs_run']}{LAST_EPOCH_FLAG if s['last'] else ''}"
                             for s in e["selected_epochs"])
        rows.append([opt, len(e["seeds"]), *[_pm(e[f"test_{n}"]) for n in names],
                     _fmt(e["train_seconds_per_epoch"], 2), _fmt(e["train_cpu_seconds_per_epoch"], 2),
                     _fmt(e["molecules_per_second"], 0), _fmt(e["passes_per_epoch"], 1), selected])
    lines += _table(header, rows)
    apart = [opt for opt, e in group["optimizers"].items() if opt != BASELINE and BASELINE in group["optimizers"]
             and not side_by_side(e, group["optimizers"][BASELINE])]
    if apart:
        lines += ["", f"{BASELINE}'s cells were trained by another command than those of {', '.join(apart)} (another "
                      "invocation, under other load): their seconds and molecules/s do not compare with "
                      f"{BASELINE}'s; their test metrics do (same splits, initial weights and batch order)."]
    if group["paired"]:
        lines += ["", f"Paired difference to {BASELINE} (test {metric}, optimizer minus {BASELINE}, over the seeds "
                      f"both have; gain: relative, positive = better than {BASELINE}):", ""]
        rows = []
        for opt, p in group["paired"].items():
            verdict = {True: "better", False: "worse", None: "–"}[p["better"]]
            rows.append([opt, p["n"], _fmt(p["mean"]), _fmt(p["std"]), _fmt(p["gain_percent"], 2) + " %"
                         if not math.isnan(p["gain_percent"]) else "–", verdict, _fmt(p["t"], 2), _fmt(p["p"], 3)])
        lines += _table(["optimizer", "pairs", "mean difference", "std", "gain", "mean is", "t", "p"], rows)
    elif len(group["optimizers"]) > 1:
        lines += ["", f"No {BASELINE} cell yet: no paired differences."]
    if group["protocol"] == "random":
        paper = reference.paper_cells_for(group["dataset"])
        if paper:
            lines += ["", "The paper's recovered cells for this dataset (**different backbones**, CoMPT / GROVER, "
                          "random 80/10/10; reference only, not comparable to ours):", ""]
            rows = [[backbone, f"test {m}", opt, f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")]
                    for backbone, m, opts in paper for opt, (mean, std) in opts.items()]
            lines += _table(["backbone (paper)", "metric", "optimizer", "reported"], rows)
    for title, path in plots.items():
        lines += ["", f"![{title}]({path})"]
    return lines + [""]


def _at_a_glance(groups: dict, alpha: float = 0.05) -> list[str]:
    """Per optimizer: in how many (dataset, protocol) groups its mean beats Adam's, and how many of
    those differences have p < alpha; stated for worse as well, so a loss is not hidden."""
    tally: dict = {}
    for group in groups.values():
        for opt, p in group["paired"].items():
            t = tally.setdefault(opt, {"better": 0, "worse": 0, "better_sig": 0, "worse_sig": 0, "groups": 0})
            t["groups"] += 1
            if p["better"] is None:
                continue
            side = "better" if p["better"] else "worse"
            t[side] += 1
            if p["p"] is not None and not math.isnan(p["p"]) and p["p"] < alpha:
                t[f"{side}_sig"] += 1
    if not tally:
        return []
    rows = [[opt, t["groups"], f"{t['better']} ({t['better_sig']} with p < {alpha})",
             f"{t['worse']} ({t['worse_sig']} with p < {alpha})"] for opt, t in tally.items()]
    return [f"Against {BASELINE} at a glance: in how many (dataset, protocol) groups each optimizer's mean test metric "
            f"over the paired seeds is better or worse than {BASELINE}'s.", "",
            *_table(["optimizer", "groups with pairs", f"better than {BASELINE}", f"worse than {BASELINE}"], rows),
            ""]


def _overview(groups: dict, alpha: float = 0.05) -> list[str]:
    """One row per (dataset, protocol), one column per optimizer: the test metric's mean ± std over
    seeds, with the paired difference's sign to the baseline marked where p < alpha."""
    optimizers = _order({opt for g in groups.values() for opt in g["optimizers"]}, list(STUDY_OPTIMIZERS))
    if not optimizers:
        return []
    rows = []
    for group in groups.values():
        better = "higher" if group["higher_is_better"] else "lower"
        row = [f"{group['dataset']}, {group['protocol']}", f"{group['metric']} ({better} is better)"]
        for opt in optimizers:
            e = group["optimizers"].get(opt)
            if e is None:
                row.append("–")
                continue
            stat = e[f"test_{group['metric']}"]
            text = _fmt(stat["mean"], 3) + (f" ± {_fmt(stat['std'], 3)}" if stat["n"] > 1 else "")
            p = group["paired"].get(opt)
            if p and p["better"] is not None and p["p"] is not None and not math.isnan(p["p"]) and p["p"] < alpha:
                text += " (+)" if p["better"] else " (−)"
            if stat["n"] < 3:
                text += f" [{stat['n']} seed{'s' if stat['n'] != 1 else ''}]"
            row.append(text)
        rows.append(row)
    return [f"Test metric, mean ± sample std over seeds; (+) / (−): better / worse than {BASELINE} with paired "
            f"p < {alpha}; [n seeds] where fewer than 3 have finished.", "",
            *_table(["dataset, protocol", "metric", *optimizers], rows), ""]


def side_by_side(a: dict, b: dict) -> bool:
    """Whether two optimizers' cells of a group were trained by the same command on every seed they
    share: then they took turns epoch by epoch under the same load, and their seconds compare."""
    shared = set(a["commands"]) & set(b["commands"])
    return all(a["commands"][s] == b["commands"][s] for s in shared)


def _ratio(g: dict, other: dict | None) -> str:
    if not other or not other.get("molecules_per_second"):
        return "–"
    if not side_by_side(g, other):
        return "– (not side by side)"
    return _fmt(g["molecules_per_second"] / other["molecules_per_second"], 2) + "x"


def _throughput_section(groups: dict) -> list[str]:
    rows = []
    for group in groups.values():
        opts = group["optimizers"]
        g = opts.get("graphsam")
        if not g or not g.get("molecules_per_second"):
            continue
        rows.append([f"{group['dataset']}, {group['protocol']}", _fmt(g["molecules_per_second"], 0),
                     _ratio(g, opts.get("adam")), _ratio(g, opts.get("sam"))])
    if not rows:
        return []
    paper = reference.PAPER_THROUGHPUT
    for backbone, v in paper.items():
        rows.append([f"paper, {backbone}, bbbp (graphs/s)", str(v["graphsam"]), f"{v['graphsam'] / v['adam']:.2f}x",
                     f"{v['graphsam'] / v['sam']:.2f}x"])
    return ["## Throughput: GraphSAM against Adam and SAM", "",
            "Training molecules per second of wall time (mean over seeds); ratios of GraphSAM's to Adam's and SAM's, "
            "only where their cells were trained by the same command (taking turns epoch by epoch, so under the same "
            "load). The paper's rows are its own backbones and hardware.", "",
            *_table(["dataset, protocol", "GraphSAM molecules/s", "x Adam", "x SAM"], rows), ""]


def _paper_section() -> list[str]:
    rows = []
    for (backbone, ds, metric), opts in reference.PAPER_CELLS.items():
        for opt, (mean, std) in opts.items():
            rows.append([backbone, ds, metric, opt, f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")])
    gains = "; ".join(f"{b}: " + ", ".join(f"{o} +{g:.2f} %" for o, g in v.items())
                      for b, v in reference.PAPER_GAIN_OVER_ADAM.items())
    return ["## The paper's recovered cells (different backbones)", "", reference.SOURCE + ".", "",
            *_table(["backbone (paper)", "dataset", "metric", "optimizer", "reported"], rows), "",
            f"Average gain over Adam across the six datasets reported there: {gains}.", ""]


def grid_counts(out: Path, cells: list[dict]) -> dict:
    """Finished cells out of the requested ones and out of the issue's full grid (six datasets x
    the study's optimizers this build has x both protocols x every seed requested so far)."""
    requested = requested_cells(out)
    have = {(c["cell"]["dataset"], c["cell"]["protocol"], int(c["cell"]["seed"]), c["cell"]["optimizer"])
            for c in cells}
    seeds = sorted({c[2] for c in requested} | {c[2] for c in have})
    full = {(d, p, s, o) for d in DATASETS for p in PROTOCOLS for s in seeds for o in available_optimizers()}
    return {"finished": len(have), "requested": len(requested), "finished_of_requested": len(have & requested),
            "full_grid": len(full), "finished_of_full_grid": len(have & full), "seeds": seeds,
            "missing_optimizers": [o for o in STUDY_OPTIMIZERS if o not in available_optimizers()]}


def build_report(out, method: str | None = None) -> dict:
    """Aggregate the cells under ``out``; write report.md, report.json and the plots. Returns the
    aggregate (what report.json holds)."""
    from graphsam_ext.study.plots import study_plots

    out = Path(out)
    method = method or default_method()
    cells, bad = load_cells(out)
    groups = aggregate(cells, method)
    counts = grid_counts(out, cells)
    entries = read_invocations(out)
    invocations = [e for e in entries if e.get("event") == "end"]
    ended = {(e.get("pid"), e.get("started")) for e in invocations}
    unended = sum(1 for e in entries if e.get("event") == "start" and (e.get("pid"), e.get("started")) not in ended)
    cell_cpu = float(sum(c.get("cpu_seconds") or 0.0 for c in cells))
    invocation_cpu = float(sum(e.get("cpu_seconds") or 0.0 for e in invocations))
    plots, plot_note = study_plots(cells, groups, out)
    envs = sorted({json.dumps({k: c.get("environment", {}).get(k) for k in ("torch", "rdkit", "python", "device",
                                                                             "num_threads", "native_library")},
                              sort_keys=True) for c in cells})
    study = load_study_file(out)
    payload = {
        "rho_used": rho_used(cells),
        "test": method, "cells_unreadable": bad, "counts": counts,
        "cpu_seconds": {"finished_cells": cell_cpu, "all_invocations": invocation_cpu},
        "invocations_without_end": unended,
        "environments": [json.loads(e) for e in envs], "settings": study.get("settings", {}),
        "groups": {f"{d}/{p}": g for (d, p), g in groups.items()}, "plots": plots,
    }
    write_json_atomic(out / "report.json", finite_or_none(payload))
    (out / "report.md").write_text(_markdown(payload, groups, plots, plot_note, invocations, method))
    return payload


def rho_used(cells: list[dict]) -> dict:
    """{optimizer: sorted distinct first-epoch rho over its cells}, read from the cells' histories
    (the rho each optimizer actually started from, whatever the study's settings said)."""
    seen: dict = {}
    for cell in cells:
        history = cell["result"].get("history") or []
        rho = history[0].get("rho") if history else None
        if rho is not None:
            seen.setdefault(cell["cell"]["optimizer"], set()).add(float(rho))
    return {opt: sorted(seen[opt]) for opt in _order(seen, list(STUDY_OPTIMIZERS))}


def _rho_text(settings: dict, used: dict) -> str:
    if used:
        shown = ", ".join(f"{opt} {'/'.join(f'{r:g}' for r in rhos)}" for opt, rhos in used.items())
        return f"rho at the first epoch {shown}"
    return f"rho {settings.get('rho')}"


def _markdown(payload, groups, plots, plot_note, invocations, method) -> str:
    counts, cpu = payload["counts"], payload["cpu_seconds"]
    settings = payload["settings"]
    lines = ["# GraphSAM study report", "",
             "Written by `graphsam study` from the cell files under `cells/`; our own model and protocol, not the "
             "paper's.", "",
             "## Progress and cost", "",
             f"- Finished cells: {counts['finished']} ({counts['finished_of_requested']} of the {counts['requested']} "
             f"requested so far; {counts['finished_of_full_grid']} of the full grid of {counts['full_grid']} = "
             f"{len(DATASETS)} datasets x {len(available_optimizers())} optimizers x {len(PROTOCOLS)} protocols x "
             f"{len(counts['seeds'])} seeds {counts['seeds']}).",
             f"- CPU time: {_hours(cpu['finished_cells'])} in the finished cells (training, validation, test "
             f"and checkpoints of each cell, summed over invocations); {_hours(cpu['all_invocations'])} over "
             f"all {len(invocations)} invocations that recorded their end (also data loading and unfinished "
             "cells)" + (f"; {payload['invocations_without_end']} more invocation(s) ended without a record (killed, "
                         "or still running), so their time is missing there" if payload["invocations_without_end"]
                         else "") + ".",
             ]
    if counts["missing_optimizers"]:
        lines.append(f"- Not in this build, so not in the grid: {', '.join(counts['missing_optimizers'])}.")
    if payload["cells_unreadable"]:
        lines.append(f"- Unreadable cell files (skipped): {', '.join(payload['cells_unreadable'])}.")
    flagged = [(g["dataset"], g["protocol"], opt, s["seed"]) for g in groups.values()
               for opt, e in g["optimizers"].items() for s in e["selected_epochs"] if s["last"]]
    lines.append(f"- Cells whose selected epoch is their last epoch (not converged; marked {LAST_EPOCH_FLAG} below): "
                 f"{len(flagged)}" + (": " + ", ".join(f"{d}/{p}/{o}/seed{s}" for d, p, o, s in flagged[:20]) +
                                      (" ..." if len(flagged) > 20 else "") if flagged else "") + ".")
    test_text = ("a two-sided paired t-test on the per-seed differences (SciPy's t distribution)"
                 if method != SIGN_FLIP else
                 "a two-sided sign-flip permutation test on the per-seed differences (exact over all 2^n sign "
                 "patterns; SciPy is not installed, so no t-test), t shown for information")
    lines += ["", "## Protocol", "",
              "- Every optimizer of a (dataset, protocol, seed) uses the same split, initial weights and batch order; "
              "the optimizers of a seed take turns epoch by epoch. Base optimizer Adam for every SAM variant.",
              "- Protocols: random = random 80/10/10, a different split per seed; scaffold = balanced Bemis-Murcko "
              "scaffold 80/10/10, a different split per seed.",
              f"- Up to {settings.get('epochs')} epochs, early stop after {settings.get('patience')} epochs without "
              f"validation improvement; batch {settings.get('batch_size')}, {settings.get('schedule')} LR schedule "
              f"peak {settings.get('lr')}; {_rho_text(settings, payload.get('rho_used', {}))}, "
              f"GraphSAM beta {settings.get('beta')}, gamma "
              f"{settings.get('gamma')}, lambda {settings.get('lam')}, sam-k k {settings.get('sam_every')}.",
              f"- Model: hidden {settings.get('hidden')}, layers {settings.get('layers')}, heads "
              f"{settings.get('heads')}, bond width {settings.get('edge_hidden')}, readout {settings.get('readout')}, "
              f"attention {settings.get('attention')}, descriptors {settings.get('descriptors')}, dropout "
              f"{settings.get('dropout')}.",
              "- Test metric of the epoch selected on validation; mean ± sample std over seeds. Seconds per epoch "
              "count the training batches only (wall and process CPU); molecules/s = training molecules / wall "
              "seconds per epoch; passes = forward/backward closure calls counted by the training loop.",
              f"- Paired test: {test_text}.",
              "", "Every setting is in `study.json`; each cell file holds its full configuration.", ""]
    lines += ["## Software", ""]
    for env in payload["environments"]:
        lines.append("- " + ", ".join(f"{k} {v}" for k, v in env.items()))
    if not payload["environments"]:
        lines.append("- no cells yet")
    lines += ["", "## Results", ""]
    if not groups:
        lines += ["No finished cells yet.", ""]
    lines += _overview(groups)
    lines += _at_a_glance(groups)
    for key, group in groups.items():
        lines += _group_section(group, plots.get(f"{key[0]}/{key[1]}", {}))
    if plot_note:
        lines += [plot_note, ""]
    lines += _throughput_section(groups)
    lines += _paper_section()
    return "\n".join(lines)
