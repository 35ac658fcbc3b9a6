"""How closely the direction a SAM variant perturbs along follows the exact SAM perturbation
direction over training (``graphsam study --cosine``).

Each optimizer trains the ``graphsam train`` model on one dataset, protocol and seed (SeedRun,
unchanged). At every ``every``-th step a :class:`DirectionProbe` computes on the side, at the
step's parameters and on its batch, the exact SAM perturbation direction g / ||g|| (the gradient
of the batch loss at theta: one extra forward/backward through the step's own closure) and its
cosine with the direction the step perturbs along:

============== ================================================================================
optimizer      direction of the step (read from the optimizer while it evaluates the updating
               gradient, the step's last closure call; nothing in graphsam_ext.optim is changed)
============== ================================================================================
graphsam       ``state[p]["direction"]``: d = g_0 / ||g_0|| at an epoch's first step, then the
               EMA d <- beta d + (1 - beta) w / ||w|| of the updating gradients
graphsam-ref   ``state[p]["direction"]``: the raw g_0 at an epoch's first step, then the same EMA
               with each tensor of w normalized on its own
sam-one        ``state[p]["direction"]``: g_0 / ||g_0|| of the epoch's first step, all epoch
sam-k, sam     on a SAM step the gradient at theta of its first closure call (the exact one: the
               cosine is 1); on a plain step of sam-k, which does not perturb, the one of its
               last SAM step (the perturbation it would re-use)
============== ================================================================================

``cosine_perturbation`` is the cosine of the perturbation actually applied, eps = theta_perturbed
- theta (the weights seen by the updating closure call minus the step's weights, in float64),
with g: the same as ``cosine`` for the paper's formulation (eps = rho d / ||d||), different for
the reference mode (eps from theta^2 d, each tensor clipped to its radius). It is left empty
where the float32 rounding of theta + eps can move the measured cosine by more than
``RESOLUTION`` (rho decays, and eps falls below the spacing of the weights) and on steps that
do not perturb.

The measurement leaves the run as it was: the closure runs under ``torch.random.fork_rng`` (so
dropout draws the masks the step then draws again, and the run's random stream is unchanged),
with every parameter's ``.grad`` set aside and put back, the model's buffers copied back, and
its closure calls and seconds taken out of the epoch's record (tested bitwise against a run
without the probe).

Output directory::

    cosine.json               settings (TrainConfig, every, command), environment, summary
    <optimizer>/              SeedRun's files (last.pt, best.pt, result.json) and rows.csv
    cosine.csv, cosine.png    every optimizer's rows, the plot
    summary.md                mean cosine per epoch range and optimizer

An optimizer whose ``result.json`` and ``rows.csv`` are there is skipped; an unfinished one is
trained again from the start (a few minutes on ESOL).
"""
from __future__ import annotations

import csv
import functools
import json
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch

from graphsam_ext import __version__
from graphsam_ext.errors import UserError
from graphsam_ext.train.config import TrainConfig
from graphsam_ext.train.experiment import finite_or_none
from graphsam_ext.train.loop import SeedRun

COSINE_OPTIMIZERS = ("graphsam", "graphsam-ref", "sam-one", "sam-k")
CHOICES = COSINE_OPTIMIZERS + ("sam",)
SETTINGS_FILE, ROWS_FILE, CSV_FILE, PNG_FILE, SUMMARY_FILE = (
    "cosine.json", "rows.csv", "cosine.csv", "cosine.png", "summary.md")
COLUMNS = ("optimizer", "step", "epoch", "step_in_epoch", "kind", "cosine", "cosine_perturbation", "rho",
           "grad_norm")
# cosine_perturbation is kept where the float32 rounding of theta + eps can move it by at most this
RESOLUTION = 1e-2
# first epochs of the summary's ranges (1-based)
RANGE_STARTS = (1, 2, 6, 11, 21, 51, 101)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])


def _cosine(a: torch.Tensor | None, b: torch.Tensor) -> float:
    if a is None:
        return math.nan
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0 or not math.isfinite(na * nb):
        return math.nan
    return float(torch.dot(a, b)) / (na * nb)


class DirectionProbe:
    """Wraps ``optimizer.step`` (an instance attribute; the class is untouched) to measure, at
    every ``every``-th step, the cosine between the step's perturbation direction and the exact
    gradient of the step's batch loss at the step's parameters (see the module docstring).

    Each measured step appends a dict with the keys of ``COLUMNS`` (but ``optimizer``) to
    ``rows``; ``extra_calls`` and ``seconds`` / ``cpu_seconds`` count the measurement's closure
    calls and time, which the caller subtracts from what the run records.
    """

    def __init__(self, model: torch.nn.Module, optimizer, every: int = 1):
        from graphsam_ext.optim import GraphSAM
        from graphsam_ext.optim.family import SAMFamily

        if not isinstance(optimizer, SAMFamily):
            raise UserError(f"the cosine study measures SAM-family optimizers, not {type(optimizer).__name__}")
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            # the step's closure counts its calls to move the running statistics in the first only
            raise UserError("the cosine study does not support models with BatchNorm layers")
        if not isinstance(every, int) or every < 1:
            raise UserError(f"every (--cosine-every) must be an integer >= 1, got {every!r}")
        self.model, self.optimizer, self.every = model, optimizer, every
        self.stores_direction = isinstance(optimizer, GraphSAM)  # SAMOne is one
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.device = self.params[0].device
        self.machine_eps = max(torch.finfo(p.dtype).eps for p in self.params)
        self.step_count, self.epoch, self.step_in_epoch = 0, 0, 0
        self.last_exact: torch.Tensor | None = None  # sam-k: its last SAM step's perturbation gradient
        self.rows: list[dict] = []
        self.extra_calls, self.seconds, self.cpu_seconds = 0, 0.0, 0.0
        self._step = optimizer.step

        @functools.wraps(self._step)  # keeps what an LR scheduler marked on the step it wraps
        def step(closure=None, grad_scaler=None):
            return self.measured_step(closure, grad_scaler)

        optimizer.step = step

    def start_epoch(self, epoch: int) -> None:
        """Before the epoch ``epoch`` (0-based) trains."""
        self.epoch, self.step_in_epoch = epoch, 0

    @torch.no_grad()
    def exact_gradient(self, closure) -> torch.Tensor:
        """The flat gradient (float64) of ``closure``'s loss at the current parameters, leaving
        the random stream, the gradients and the model's buffers as they were."""
        saved_grads = [p.grad for p in self.params]
        buffers = [b.clone() for b in self.model.buffers()]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            for p in self.params:
                p.grad = None
            with torch.enable_grad():
                closure()
            grad = _flat(torch.zeros_like(p) if p.grad is None else p.grad for p in self.params)
        for p, g in zip(self.params, saved_grads):
            p.grad = g
        for b, saved in zip(self.model.buffers(), buffers):
            b.copy_(saved)
        self.extra_calls += 1
        return grad

    def measured_step(self, closure=None, grad_scaler=None):
        measure = closure is not None and self.step_count % self.every == 0
        exact = theta = None
        if measure:
            start, cpu_start = time.perf_counter(), time.process_time()
            exact = self.exact_gradient(closure)
            theta = _flat(self.params)
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu_start
        calls: list[dict] = []

        def watched():
            seen = {}
            if measure:
                with torch.no_grad():
                    seen["params"] = _flat(self.params)
                    seen["rho"] = float(self.optimizer.rho)
                    if self.stores_direction:
                        seen["direction"] = _flat(self.optimizer.state[p]["direction"] for p in self.params)
            calls.append(seen)
            loss = closure()
            if not self.stores_direction and len(calls) == 1:
                with torch.no_grad():
                    seen["grad"] = _flat(torch.zeros_like(p) if p.grad is None else p.grad for p in self.params)
            return loss

        loss = self._step(watched if closure is not None else None, grad_scaler=grad_scaler)
        exact_step = len(calls) > 1  # a gradient at theta was evaluated for this step's perturbation
        if exact_step and not self.stores_direction:
            self.last_exact = calls[0]["grad"]
        if measure:
            self._record(exact, theta, calls, exact_step)
        self.step_count += 1
        self.step_in_epoch += 1
        return loss

    def _record(self, exact: torch.Tensor, theta: torch.Tensor, calls: list[dict], exact_step: bool) -> None:
        last = calls[-1]
        perturbs = self.stores_direction or exact_step
        direction = last["direction"] if self.stores_direction else (calls[0]["grad"] if exact_step else
                                                                      self.last_exact)
        cos_eps = math.nan
        if perturbs:
            eps = last["params"] - theta  # exact in float64: both are float32 (or float64) weights
            # theta + eps was rounded to the weights' precision: off by at most half a unit in the last place
            rounding = 0.5 * self.machine_eps * float(last["params"].norm())
            norm = float(eps.norm())
            if norm > 0 and rounding / norm <= RESOLUTION:
                cos_eps = _cosine(eps, exact)
        self.rows.append({"step": self.step_count, "epoch": self.epoch + 1, "step_in_epoch": self.step_in_epoch,
                          "kind": "exact" if exact_step else "approx", "cosine": _cosine(direction, exact),
                          "cosine_perturbation": cos_eps, "rho": last["rho"], "grad_norm": float(exact.norm())})


class ProbedRun(SeedRun):
    """A SeedRun with a DirectionProbe on its optimizer; the probe's closure calls and seconds
    are taken out of each epoch's record, so the history reads as the run's own."""

    def __init__(self, *args, every: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.every = every

    def _setup(self):
        super()._setup()
        self.probe = DirectionProbe(self.model, self.optimizer, self.every)

    def _train_epoch(self, epoch: int, bar_factory) -> dict:
        probe = self.probe
        probe.start_epoch(epoch)
        calls, seconds, cpu_seconds = probe.extra_calls, probe.seconds, probe.cpu_seconds
        record = super()._train_epoch(epoch, bar_factory)
        record["passes"] -= probe.extra_calls - calls
        record["train_seconds"] -= probe.seconds - seconds
        record["train_cpu_seconds"] -= probe.cpu_seconds - cpu_seconds
        return record


# -- the study ---------------------------------------------------------------------------------------
def cosine_config(given: dict) -> TrainConfig:
    """The ``graphsam train`` defaults with ``given`` over them; without a given patience, no
    early stopping (every optimizer trains all epochs, so the lines span the same range)."""
    values = {f.name: TrainConfig.default(f.name) for f in fields(TrainConfig)}
    values.update(given)
    if "patience" not in given:
        values["patience"] = values["epochs"]
    cfg = TrainConfig.from_dict(values)
    if cfg.seeds != 1:
        raise UserError("the cosine study trains one seed (--seeds K)")
    for name in cfg.optimizers:
        if name not in CHOICES:
            raise UserError(f"--optimizers: the cosine study measures {', '.join(CHOICES)}; not {name}")
    return cfg


def _check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text()).get("settings", {})
    keep = ("optimizers", "data_dir", "num_workers")
    differ = sorted(k for k in set(stored) | set(settings) if k not in keep and stored.get(k) != settings.get(k))
    if differ:
        shown = ", ".join(f"{k}: stored {stored.get(k)!r}, asked {settings.get(k)!r}" for k in differ)
        raise UserError(f"{out} holds a cosine study with other settings ({shown}); drop those options or choose "
                        "another --out")


def _settings(cfg: TrainConfig, every: int) -> dict:
    return {**{k: v for k, v in cfg.to_dict().items() if k != "optimizers"}, "every": every}


def _finished(directory: Path) -> bool:
    return (directory / "result.json").is_file() and (directory / ROWS_FILE).is_file()


def _write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the keys of COLUMNS) as CSV, NaN as an empty cell; written whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    tmp.replace(path)


def read_rows(path: Path) -> list[dict]:
    """Rows of a rows.csv / cosine.csv, numbers parsed (an empty cell is NaN)."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for key, value in row.items():
                if key in ("optimizer", "kind"):
                    parsed[key] = value
                elif key in ("step", "epoch", "step_in_epoch"):
                    parsed[key] = int(value)
                else:
                    parsed[key] = float(value) if value != "" else math.nan
            out.append(parsed)
    return out


def run_cosine(cfg: TrainConfig, out, every: int = 1, device="cpu", *, log: Callable[[str], None] | None = None,
               progress: bool = False, command: list[str] | None = None, dataset=None) -> dict:
    """Train every optimizer of ``cfg`` with a probe into ``out`` (skipping finished ones), then
    write cosine.csv, cosine.png, summary.md and cosine.json; returns the summary."""
    from graphsam_ext.train.experiment import environment, load_data, split_for_seed
    from graphsam_ext.train.metrics import default_metric

    log = log or (lambda msg: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(cfg, every)
    _check_settings(out, settings)
    pending = [opt for opt in cfg.optimizers if not _finished(out / opt)]
    if pending:
        if dataset is None:
            dataset = load_data(cfg)
        data = split_for_seed(cfg, dataset, cfg.first_seed, out)
        env = environment(torch.device(device))
        _write_settings(out, settings, command, env, None)
        for opt in pending:
            directory = out / opt
            for name in ("last.pt", "best.pt", "result.json", ROWS_FILE):  # an unfinished run starts over
                (directory / name).unlink(missing_ok=True)
            log(f"{opt}: {cfg.epochs} epochs on {cfg.data_label} ({cfg.split} split, seed {cfg.first_seed}), "
                f"measuring every {every} step(s)")
            start = time.perf_counter()
            run = ProbedRun(cfg, opt, cfg.first_seed, data, directory, device, progress=progress, log=log, every=every)
            result = run.run()
            _write_rows(directory / ROWS_FILE, [{"optimizer": opt, **row} for row in run.probe.rows])
            metric = cfg.metric or default_metric(data.task_type)
            log(f"{opt}: {len(run.probe.rows)} steps measured, test {metric} "
                f"{result.get('test', {}).get(metric, math.nan):.4f}, {time.perf_counter() - start:.0f} s")
    return write_outputs(out, cfg.optimizers)


def _write_settings(out: Path, settings: dict, command, env, summary) -> None:
    path = out / SETTINGS_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    payload = {"graphsam_ext_version": __version__, "settings": settings,
               "command": command if command is not None else stored.get("command"),
               "environment": env if env is not None else stored.get("environment"),
               "summary": summary if summary is not None else stored.get("summary")}
    path.write_text(json.dumps(finite_or_none(payload), indent=2))


def write_outputs(out, optimizers=None) -> dict:
    """cosine.csv, cosine.png and summary.md from the optimizers' rows.csv in ``out`` (those of
    ``optimizers``, default every one there, in the study's order); returns the summary."""
    out = Path(out)
    found = [p.parent.name for p in sorted(out.glob(f"*/{ROWS_FILE}"))]
    if optimizers is None:
        optimizers = sorted(found, key=lambda o: CHOICES.index(o) if o in CHOICES else len(CHOICES))
    optimizers = [o for o in optimizers if o in found]
    if not optimizers:
        raise UserError(f"{out}: no optimizer's {ROWS_FILE} yet; run `graphsam study --cosine --out {out}` first")
    by_opt = {opt: read_rows(out / opt / ROWS_FILE) for opt in optimizers}
    _write_rows(out / CSV_FILE, [row for opt in optimizers for row in by_opt[opt]])
    summary = summarize(by_opt)
    (out / SUMMARY_FILE).write_text(summary_markdown(summary) + "\n")
    plot_cosine(by_opt, out / PNG_FILE)
    stored = json.loads((out / SETTINGS_FILE).read_text()) if (out / SETTINGS_FILE).is_file() else {}
    _write_settings(out, stored.get("settings", {}), None, None, summary)
    return summary


def _ranges(last_epoch: int) -> list[tuple[int, int]]:
    starts = [s for s in RANGE_STARTS if s <= last_epoch]
    ends = [s - 1 for s in starts[1:]] + [last_epoch]
    return list(zip(starts, ends))


def _stats(rows: list[dict]) -> dict:
    """Mean cosine over the rows, over the approximate steps only and their share with cosine >= 0
    (the paper's "same direction"), and the mean perturbation cosine where it was resolvable."""
    def mean(values):
        values = [v for v in values if not math.isnan(v)]
        return (sum(values) / len(values) if values else math.nan), len(values)

    approx = [r["cosine"] for r in rows if r["kind"] == "approx"]
    approx_mean, n_approx = mean(approx)
    valid = [v for v in approx if not math.isnan(v)]
    eps_mean, n_eps = mean([r["cosine_perturbation"] for r in rows])
    return {"steps": len(rows), "mean": mean([r["cosine"] for r in rows])[0], "approx_steps": n_approx,
            "approx_mean": approx_mean, "approx_min": min(valid) if valid else math.nan,
            "approx_same_direction": sum(v >= 0 for v in valid) / len(valid) if valid else math.nan,
            "perturbation_mean": eps_mean, "perturbation_steps": n_eps}


def summarize(by_opt: dict) -> dict:
    """{optimizer: {"all": stats, "epochs a-b": stats, ...}} over the measured rows."""
    last = max((r["epoch"] for rows in by_opt.values() for r in rows), default=0)
    out = {}
    for opt, rows in by_opt.items():
        entry = {"all": _stats(rows)}
        for first, end in _ranges(last):
            part = [r for r in rows if first <= r["epoch"] <= end]
            if part:
                entry[f"epochs {first}-{end}" if end > first else f"epoch {first}"] = _stats(part)
        out[opt] = entry
    return out


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_markdown(summary: dict) -> str:
    """Per optimizer and epoch range: mean cosine over every measured step, over the approximate
    steps, their minimum and share with cosine >= 0, the mean perturbation cosine (resolvable steps)."""
    lines = ["| optimizer | epochs | steps | mean cosine | approx. steps | mean (approx.) | min (approx.) | "
             "cosine >= 0 (approx.) | mean cosine of eps (steps) |",
             "|" + "|".join(" --- " for _ in range(9)) + "|"]
    for opt, entry in summary.items():
        for label, st in entry.items():
            lines.append(f"| {opt} | {label} | {st['steps']} | {_fmt(st['mean'])} | {st['approx_steps']} | "
                         f"{_fmt(st['approx_mean'])} | {_fmt(st['approx_min'])} | "
                         f"{_fmt(st['approx_same_direction'], 2)} | {_fmt(st['perturbation_mean'])} "
                         f"({st['perturbation_steps']}) |")
    return "\n".join(lines)


def plot_cosine(by_opt: dict, path: Path) -> Path:
    """Two panels, one colour per optimizer: per epoch the mean cosine over the measured steps with
    the band between its quartiles, and the first three epochs step by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (full, first) = plt.subplots(2, 1, figsize=(7.0, 6.4), dpi=90)
    for i, (opt, rows) in enumerate(by_opt.items()):
        color = f"C{i}"
        epochs = sorted({r["epoch"] for r in rows})
        values = [np.array([r["cosine"] for r in rows if r["epoch"] == e and not math.isnan(r["cosine"])])
                  for e in epochs]
        kept = [(e, v) for e, v in zip(epochs, values) if v.size]
        xs = [e for e, _ in kept]
        full.fill_between(xs, [np.quantile(v, 0.25) for _, v in kept], [np.quantile(v, 0.75) for _, v in kept],
                          color=color, alpha=0.15, linewidth=0)
        full.plot(xs, [v.mean() for _, v in kept], color=color, marker=".", linewidth=1.6, label=opt)
        per_epoch = max((r["step_in_epoch"] for r in rows), default=0) + 1
        early = [(r["epoch"] - 1 + r["step_in_epoch"] / per_epoch, r["cosine"]) for r in rows if r["epoch"] <= 3]
        first.plot([x for x, _ in early], [y for _, y in early], color=color, marker=".", markersize=3,
                   linewidth=0.9, label=opt)
    for ax in (full, first):
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_ylabel("cosine(direction, exact g)")
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3)
    full.set_xlabel("epoch (mean over its measured steps; band: quartiles)")
    first.set_xlabel("epoch (the first three, every measured step)")
    full.legend(fontsize=8, ncol=len(by_opt), loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
