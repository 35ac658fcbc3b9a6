"""What every subcommand needs: the device and threads, progress and log output."""
from __future__ import annotations

import sys

from graphsam_ext.errors import UserError


def setup_execution(args):
    import torch

    if args.num_threads is not None:
        if args.num_threads < 1:
            raise UserError(f"--num-threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to this torch build; use --device cpu or auto")
    return torch.device(args.device)


def show_progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def logger(args):
    if args.quiet:
        return lambda msg: None
    try:
        from tqdm.auto import tqdm

        return lambda msg: tqdm.write(msg)
    except ImportError:
        return lambda msg: print(msg, flush=True)
