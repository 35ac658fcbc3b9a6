"""graphsam-ext: fused Sharpness-Aware Minimization (GraphSAM, SAM, ASAM) and sparse graph
attention for molecular graph transformers.

Importing the package needs neither RDKit nor a GPU; RDKit is imported lazily by
``graphsam_ext.data``.
"""
from graphsam_ext import ops
from graphsam_ext._backend import build_info

__version__ = "0.1.0"

__all__ = ["ops", "build_info", "__version__"]
