"""The study's PNGs, per (dataset, protocol): validation metric against epoch and against wall
time (``graphsam_ext.train.plots``, one colour per optimizer, one line per seed), and rho against
epoch for the optimizers whose epoch history records a rho."""
from __future__ import annotations

from pathlib import Path


def _rho_series(result: dict) -> tuple[list, list]:
    xs, ys = [], []
    for record in result.get("history", []):
        rho = record.get("rho")
        if isinstance(rho, (int, float)):
            xs.append(record["epoch"])
            ys.append(float(rho))
    return xs, ys


def plot_rho(by_opt: dict, path: Path) -> tuple[Path | None, list[str]]:
    """rho against epoch, one colour per optimizer and one line per seed; returns the path (None
    when no optimizer recorded a rho) and the optimizers without one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # colours by position among all optimizers, as in the validation plots
    series, without = {}, []
    for i, (opt, seeds) in enumerate(by_opt.items()):
        lines = [_rho_series(seeds[s]) for s in sorted(seeds)]
        lines = [line for line in lines if line[0]]
        if lines:
            series[opt] = (f"C{i}", lines)
        else:
            without.append(opt)
    if not series:
        return None, without
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    positive = all(y > 0 for _, lines in series.values() for _, ys in lines for y in ys)
    for opt, (color, lines) in series.items():
        for j, (xs, ys) in enumerate(lines):
            ax.plot(xs, ys, color=color, alpha=0.8, linewidth=1.2, label=opt if j == 0 else None)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("rho used in the epoch")
    title = "no rho recorded: " + ", ".join(without) if without else None
    if title:
        ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(title="optimizer (one line per seed)", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path, without


def study_plots(cells: list[dict], groups: dict, out: Path) -> tuple[dict, str | None]:
    """{"<dataset>/<protocol>": {title: relative path}} and a note when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {}, "No plots: matplotlib is not installed (`pip install matplotlib`); the numbers are complete."
    from graphsam_ext.train.plots import plot_validation

    out = Path(out)
    written = {}
    for (dataset, protocol), group in groups.items():
        by_opt: dict = {}
        for cell in cells:
            c = cell["cell"]
            if (c["dataset"], c["protocol"]) == (dataset, protocol):
                by_opt.setdefault(c["optimizer"], {})[int(c["seed"])] = cell["result"]
        by_opt = {opt: by_opt[opt] for opt in group["optimizers"]}
        directory = out / "plots" / f"{dataset}-{protocol}"
        directory.mkdir(parents=True, exist_ok=True)
        entry = {}
        for path in plot_validation(by_opt, group["metric"], directory):
            what = "wall time" if path.stem.endswith("_time") else "epoch"
            entry[f"{dataset}, {protocol}: validation {group['metric']} against {what}"] = \
                str(path.relative_to(out))
        rho_path, _ = plot_rho(by_opt, directory / "rho_vs_epoch.png")
        if rho_path is not None:
            entry[f"{dataset}, {protocol}: rho against epoch"] = str(rho_path.relative_to(out))
        written[f"{dataset}/{protocol}"] = entry
    return written, None
