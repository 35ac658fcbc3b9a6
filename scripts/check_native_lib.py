"""Load a freshly built native library from a directory and check its operators are registered.

Usage: python scripts/check_native_lib.py DIR [--expect-cuda]
DIR holds either the Python module graphsam_ext/_C*.so (setup.py) or the plain operator library
libgraphsam_ext_ops.so (CMake). Loading it resolves every symbol (the link check); the dispatcher
query then confirms each op has a CPU kernel (and a CUDA kernel with --expect-cuda).
"""
import argparse
import glob
import importlib.util
import os
import sys

import torch

OPS = ["sum_squares", "unscale_sum_squares_", "zero_", "perturb_", "direction_update_", "adam_step_", "sgd_step_",
       "graph_attention_forward", "graph_attention_backward", "dropout"]


def load(path: str) -> dict:
    if os.path.basename(path).startswith("lib"):
        torch.ops.load_library(path)
        return {}
    spec = importlib.util.spec_from_file_location("_C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_info()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="directory searched (recursively) for the built library")
    parser.add_argument("--expect-cuda", action="store_true", help="require CUDA kernels for every op")
    args = parser.parse_args()
    found = sorted(glob.glob(os.path.join(args.directory, "**", "_C*.so"), recursive=True)
                   + glob.glob(os.path.join(args.directory, "**", "libgraphsam_ext_ops*.so"), recursive=True))
    if not found:
        print(f"no native library under {args.directory}", file=sys.stderr)
        return 1
    info = load(found[0])
    keys = ["CPU"] + (["CUDA"] if args.expect_cuda else [])
    missing = [f"{op}/{key}" for op in OPS for key in keys
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"graphsam_ext::{op}", key)]
    print(f"loaded {found[0]} {info}")
    if missing:
        print("missing kernels: " + ", ".join(missing), file=sys.stderr)
        return 1
    print(f"all {len(OPS)} ops have kernels for {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
