"""The one place that decides whether the native library or the pure-PyTorch fallback runs.

``GRAPHSAM_EXT_NATIVE=0`` forces the fallback. When the native library cannot be imported the
fallback is used and a single warning carries the real import error.
"""
from __future__ import annotations

import os
import warnings
from functools import lru_cache

import torch

ENV_VAR = "GRAPHSAM_EXT_NATIVE"


@lru_cache(maxsize=None)
def _load():
    """Import graphsam_ext._C once; return (module or None, error message or None)."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"disabled by {ENV_VAR}=0"
    try:
        from graphsam_ext import _C
    except ImportError as exc:
        warnings.warn(
            f"graphsam_ext: native library not available ({exc}); using the pure-PyTorch fallback. "
            "Rebuild with `pip install -e . --no-build-isolation` to get the fused kernels.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, str(exc)
    return _C, None


def native_library():
    """The imported native module, or None."""
    return _load()[0]


def build_info() -> dict:
    """How the native library was built (empty dict plus the reason when it is not loaded)."""
    lib, err = _load()
    if lib is None:
        return {"native": False, "reason": err}
    return {"native": True, **lib.build_info()}


@lru_cache(maxsize=None)
def _native_device_types() -> frozenset:
    lib = native_library()
    if lib is None:
        return frozenset()
    types = {"cpu"}
    if lib.build_info().get("cuda"):
        types.add("cuda")
    return frozenset(types)


def use_native(device: torch.device | str) -> bool:
    """True when the native kernels exist for tensors on ``device``."""
    return torch.device(device).type in _native_device_types()
