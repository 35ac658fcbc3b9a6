"""Command-line options generated from ``TrainConfig``'s field metadata, plus the options that
are not part of a run's configuration (execution, output)."""
from __future__ import annotations

import argparse
from dataclasses import fields

from graphsam_ext.errors import UserError
from graphsam_ext.train.config import COMMAND_DEFAULTS, TrainConfig

GROUP_TITLES = {
    "data": "data",
    "optimization": "optimization",
    "protocol": "protocol",
    "model": "model (defaults chosen by the search in docs/model.md)",
}
# Options that may be changed when resuming a run (everything else comes from its config.json).
RESUMABLE_OVERRIDES = ("epochs", "patience", "num_workers")


def flag_of(name: str) -> str:
    """The canonical flag of a TrainConfig field."""
    return _flags(next(f for f in fields(TrainConfig) if f.name == name))[0]


def _flags(f) -> tuple:
    return f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)


def _parse_with(convert, flag: str):
    """An argparse type that turns a UserError / ValueError into argparse's own usage error."""
    def parse(text):
        try:
            return convert(text)
        except (UserError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _format_default(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _metavar(name: str, meta: dict):
    if meta["choices"] and meta["parse"] is None:
        return None  # argparse lists the choices
    if meta["choices"]:
        return name.split("_")[0].upper()
    return {int: "N", float: "X"}.get(meta["parse"], "VALUE")


def add_config_options(parser: argparse.ArgumentParser, command: str) -> None:
    """One option per TrainConfig field, its help ending with the default this command uses."""
    defaults = COMMAND_DEFAULTS[command]
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        flags = _flags(f)
        default = defaults.get(f.name, TrainConfig.default(f.name))
        help_text = meta["help"]
        if meta["choices"]:
            help_text += f"; one of {', '.join(meta['choices'])}"
        if default is not None and "(default" not in help_text:
            help_text += f" (default {_format_default(default)})"
        kwargs = dict(dest=f.name, default=None, help=help_text)
        if isinstance(TrainConfig.default(f.name), bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if meta["parse"] is not None:
                kwargs["type"] = _parse_with(meta["parse"], flags[0])
            elif meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["nargs"] is not None:
                kwargs["nargs"] = meta["nargs"]
            kwargs["metavar"] = meta["metavar"] or _metavar(f.name, meta)
        groups[meta["group"]].add_argument(*flags, **kwargs)
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output-dir", metavar="DIR",
                     help="run directory (default: a new directory under ./runs/); never overwritten without "
                          "--overwrite")
    out.add_argument("--overwrite", action="store_true",
                     help="replace --output-dir when it already holds a graphsam run")
    out.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its last checkpoints (its settings are reused; only "
                          f"{', '.join(flag_of(o) for o in RESUMABLE_OVERRIDES)} may be changed)")


def add_execution_options(parser: argparse.ArgumentParser, num_threads: int | None = None) -> None:
    g = parser.add_argument_group("execution")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run: cpu, cuda, or auto (cuda when a GPU is visible; default auto)")
    if num_threads is None:
        threads_help = "CPU threads for torch (default: torch's own choice)"
    else:
        threads_help = (f"CPU threads for torch (default {num_threads}: the small default model gains little from "
                        "more, and OpenMP threads slow down many times over when other processes share the cores)")
    g.add_argument("--num-threads", type=int, default=num_threads, metavar="N", help=threads_help)
    g.add_argument("--quiet", action="store_true", help="no progress bars and no per-seed messages")


def config_from_args(args, command: str) -> TrainConfig:
    """The TrainConfig of the given options over this command's defaults."""
    values = {f.name: TrainConfig.default(f.name) for f in fields(TrainConfig)}
    values.update(COMMAND_DEFAULTS[command])
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None})
    return TrainConfig.from_dict(values)


def given_config_options(args) -> list[str]:
    """The TrainConfig fields that were set on the command line."""
    return [f.name for f in fields(TrainConfig) if getattr(args, f.name, None) is not None]
