"""``python -m graphsam_ext.info``: how this installation was built and what it can run."""
from __future__ import annotations

import torch

from graphsam_ext import __version__
from graphsam_ext._backend import build_info


def describe() -> str:
    info = build_info()
    lines = [
        f"graphsam-ext {__version__}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"native library: {'yes' if info.get('native') else 'no (' + str(info.get('reason')) + ')'}",
    ]
    if info.get("native"):
        lines += [
            f"  built against torch {info['torch_built_against']}",
            f"  CUDA kernels: {'yes, archs ' + info['cuda_archs'] if info['cuda'] else 'no'}",
            f"  OpenMP: {'yes' if info['openmp'] else 'no'}, max threads {info['omp_max_threads']}",
        ]
    lines.append(f"visible CUDA devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
