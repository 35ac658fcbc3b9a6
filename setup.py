"""Build script for graphsam-ext.

Environment variables:
  GRAPHSAM_EXT_BUILD_NATIVE=0   build no native code (pure-PyTorch fallback only)
  GRAPHSAM_EXT_BUILD_CUDA=1|0   force the CUDA kernels on or off; default: on when torch is a
                                CUDA build and a CUDA toolkit (CUDA_HOME / nvcc) is found
  TORCH_CUDA_ARCH_LIST          CUDA architectures (default here "8.0;9.0+PTX": machine code for A100
                                and H100/H200, plus PTX of 9.0 that the driver compiles for newer
                                cards; a card older than 9.0 that is not listed gets the fallback)
  MAX_JOBS                      parallel compile jobs
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# SASS for sm_80 (runs on 8.x) and sm_90; PTX of the newest, so later architectures run it too
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name}={value!r}: use 1 or 0 (or leave it unset for auto)")


def _find_cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    # nvcc may be a wrapper script: look for the toolkit it calls
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    try:
        with open(nvcc, "r", errors="ignore") as fh:
            for token in fh.read().split():
                if token.endswith("/bin/nvcc") or token.endswith('/bin/nvcc"'):
                    candidates.append(os.path.dirname(os.path.dirname(token.strip('"'))))
    except OSError:
        pass
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def _extensions():
    if _flag("GRAPHSAM_EXT_BUILD_NATIVE") is False:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    want_cuda = _flag("GRAPHSAM_EXT_BUILD_CUDA")
    cuda_home = _find_cuda_home() if torch.version.cuda else None
    use_cuda = bool(torch.version.cuda) and cuda_home is not None if want_cuda is None else want_cuda
    if use_cuda and not torch.version.cuda:
        raise SystemExit("GRAPHSAM_EXT_BUILD_CUDA=1 but this torch is a CPU-only build")
    if use_cuda and cuda_home is None:
        raise SystemExit("GRAPHSAM_EXT_BUILD_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)

    sources = ["csrc/registration.cpp", "csrc/python_module.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    macros = [("GRAPHSAM_EXT_VERSION", '"0.1.0"')]
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    args = {"cxx": cxx}
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        arch = os.environ["TORCH_CUDA_ARCH_LIST"]
        macros += [("GRAPHSAM_EXT_WITH_CUDA", None), ("GRAPHSAM_EXT_CUDA_ARCHS", f'"{arch}"')]
        # fast math must not change the fp32 update arithmetic shared with the CPU kernels
        args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-fmad=false"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls(
        name="graphsam_ext._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_compile_args=args,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
