"""PNG plots of the validation metric against epoch and against wall time, one colour per
optimizer and one line per seed (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path


def plot_validation(results: dict, metric: str, out_dir: str | Path) -> list[Path]:
    """results: {optimizer: {seed: result dict with "history"}}. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    for x_key, x_label, name in (
        ("epoch", "epoch", f"val_{metric}_vs_epoch.png"),
        ("elapsed_seconds", "wall time (s, training + validation)", f"val_{metric}_vs_time.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for i, (opt, by_seed) in enumerate(results.items()):
            color = f"C{i}"
            for j, (seed, res) in enumerate(sorted(by_seed.items())):
                hist = res.get("history", [])
                xs = [r[x_key] for r in hist]
                ys = [r["val"].get(metric, float("nan")) for r in hist]
                ax.plot(xs, ys, color=color, alpha=0.8, linewidth=1.2, label=opt if j == 0 else None)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend(title="optimizer (one line per seed)", fontsize=8, title_fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
