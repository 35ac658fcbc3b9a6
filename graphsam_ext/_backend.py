"""The one place that decides whether the native library or the pure-PyTorch fallback runs.

``GRAPHSAM_EXT_NATIVE=0`` forces the fallback. When the native library cannot be imported the
fallback is used and a single warning carries the real import error.

A build with CUDA kernels holds machine code only for the architectures it was compiled for
(``TORCH_CUDA_ARCH_LIST``, plus PTX that newer cards compile at load time). On a card it cannot
run on, the first use of each device launches one tiny kernel; if CUDA answers that there is no
kernel image for the device, that device gets the fallback and one warning naming its
architecture and the rebuild command, instead of every op failing.
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


# What CUDA says when a binary holds no code the device can run: no SASS for its architecture and
# no PTX it can compile (or PTX newer than its driver understands).
_NO_KERNEL_IMAGE = (
    "no kernel image is available",
    "invalid device function",
    "unsupported toolchain",
)

# CUDA device index -> whether our kernels run there (decided on the device's first use).
_CUDA_READY: dict[int, bool] = {}


def _launch_probe(index: int) -> None:
    """Launch one of our CUDA kernels on device ``index``; a missing kernel image raises at launch,
    so this needs no synchronization."""
    x = torch.ones(8, device=torch.device("cuda", index))
    torch.ops.graphsam_ext.sum_squares(x, None, None, 0, 0.0)


def _device_description(index: int) -> tuple[str, tuple[int, int]]:
    return torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)


def _is_missing_kernel_image(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(text in message for text in _NO_KERNEL_IMAGE)


def _probe_cuda(index: int) -> bool:
    """True when our kernels run on device ``index``; otherwise warn (once: the answer is cached)."""
    try:
        _launch_probe(index)
    except RuntimeError as exc:
        if not _is_missing_kernel_image(exc):
            raise
        name, (major, minor) = _device_description(index)
        lib = native_library()
        built = lib.build_info().get("cuda_archs", "") if lib is not None else ""
        warnings.warn(
            f"graphsam_ext: the CUDA kernels were built for TORCH_CUDA_ARCH_LIST={built!r}, which cannot run on "
            f"cuda:{index} ({name}, sm_{major}{minor}): {str(exc).splitlines()[0]}. Using the pure-PyTorch "
            f"fallback on this device. Rebuild for it with TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\" "
            "pip install --no-build-isolation -e . to get the fused kernels.",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    return True


def _probe_deferred() -> bool:
    """No probe while Dynamo traces (tensors there are fake) or a CUDA graph is being captured
    (the probe's launch would join the graph): the kernels are assumed to run until an eager use
    decides."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _cuda_kernels_run(index: int) -> bool:
    ready = _CUDA_READY.get(index)
    if ready is None:
        if _probe_deferred():
            return True
        ready = _CUDA_READY[index] = _probe_cuda(index)
    return ready


def use_native(device: torch.device | str) -> bool:
    """True when the native kernels exist for tensors on ``device`` (and, on CUDA, run there)."""
    device = torch.device(device)
    if device.type not in _native_device_types():
        return False
    if device.type != "cuda":
        return True
    return _cuda_kernels_run(device.index if device.index is not None else torch.cuda.current_device())
