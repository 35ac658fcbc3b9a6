"""Checkpoint files.

``best.pt`` (the selected model) and ``last.pt`` (the state after the last finished epoch) share
one layout: everything ``graphsam predict`` needs (model config and weights, task names and
type, target scaler, featurizer config, data summary, training config) plus, in ``last.pt``,
everything an exact resume needs (optimizer and LR schedule state, RNG states, history,
early-stopping state and the best weights so far). Files hold only tensors and plain Python
containers, so they load with ``torch.load(weights_only=True)``.

Writes are atomic: the checkpoint goes to a temporary file in the same directory, is flushed
and fsync'ed, and replaces the old file with ``os.replace`` (then the directory is fsync'ed),
so a run killed at any moment leaves either the previous checkpoint or the new one, never a
torn file. A killed write can leave its temporary file (``.<name>.<random>.tmp``) behind; the
next successful write of the same checkpoint removes it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "graphsam-ext-checkpoint"
FORMAT_VERSION = 1


def _write(payload: dict, file) -> None:
    """Serialize ``payload`` into an open binary file (a separate step so tests can slow it down)."""
    torch.save(payload, file)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same directory, fsync,
    ``os.replace``)."""
    path = Path(path)
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            _write({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    for stale in directory.glob(f".{path.name}.*.tmp"):  # left by writes that were killed
        stale.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read: it is truncated, corrupt or not a graphsam-ext "
                         f"checkpoint ({type(exc).__name__}: {exc}); delete it to start that run afresh") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a graphsam-ext checkpoint (no '{FORMAT}' marker); "
                         "was it written by another program?")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {ckpt.get('format_version')}, this graphsam-ext reads "
            f"version {FORMAT_VERSION}"
        )
    return ckpt
