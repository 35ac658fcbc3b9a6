"""Checkpoint files.

``best.pt`` (the selected model) and ``last.pt`` (the state after the last finished epoch) share
one layout: everything ``graphsam predict`` needs (model config and weights, task names and
type, target scaler, featurizer config, data summary, training config) plus, in ``last.pt``,
everything an exact resume needs (optimizer and LR schedule state, RNG states, history,
early-stopping state and the best weights so far). Files hold only tensors and plain Python
containers, so they load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = "graphsam-ext-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable graphsam-ext checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a graphsam-ext checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {ckpt.get('format_version')}, this graphsam-ext reads "
            f"version {FORMAT_VERSION}"
        )
    return ckpt
