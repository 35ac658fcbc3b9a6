"""Native vs fallback is decided in one place; a missing library warns once and falls back."""
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from tests.conftest import ROOT


def run_python(code, **env):
    import os
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_env_var_forces_fallback():
    out = run_python("""
        import torch, graphsam_ext
        from graphsam_ext import _backend, ops
        from graphsam_ext.optim import GraphSAM
        assert _backend.native_library() is None
        assert graphsam_ext.build_info() == {"native": False, "reason": "disabled by GRAPHSAM_EXT_NATIVE=0"}
        assert not _backend.use_native("cpu")
        p = torch.nn.Parameter(torch.randn(10))
        opt = GraphSAM([p])
        assert opt.implementation == "foreach", opt.implementation
        print("ok")
    """, GRAPHSAM_EXT_NATIVE="0")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_missing_library_warns_once_with_the_import_error():
    out = run_python("""
        import sys, warnings
        sys.modules["graphsam_ext._C"] = None          # makes `from graphsam_ext import _C` fail
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            from graphsam_ext import _backend, ops
            _backend.native_library(); _backend.native_library()
            x = torch.randn(5)
            assert torch.equal(ops.sum_squares(x), (x.double() ** 2).sum())
        messages = [str(w.message) for w in caught if "native library not available" in str(w.message)]
        assert len(messages) == 1, messages
        assert "import of graphsam_ext._C halted" in messages[0] or "_C" in messages[0], messages[0]
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_import_needs_no_rdkit():
    out = run_python("""
        import sys
        sys.modules["rdkit"] = None
        import graphsam_ext, graphsam_ext.optim, graphsam_ext.nn, graphsam_ext.info
        print(graphsam_ext.info.describe().splitlines()[0])
    """)
    assert out.returncode == 0 and out.stdout.startswith("graphsam-ext"), out.stderr


# ---- a CUDA build on a card it has no kernel image for (mocked: runs without a GPU) ----

NO_IMAGE = "CUDA error: no kernel image is available for execution on the device\nCompile with TORCH_USE_CUDA_DSA"


@pytest.fixture
def mock_cuda(monkeypatch):
    """A native library with CUDA kernels and one card; returns the list of probed device indices.
    Set ``mock_cuda.error`` to the exception the probe's launch raises."""
    from graphsam_ext import _backend

    class Probe(list):
        error = None

    probed = Probe()

    def launch(index):
        probed.append(index)
        if probed.error is not None:
            raise probed.error

    monkeypatch.setattr(_backend, "_native_device_types", lambda: frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(_backend, "_CUDA_READY", {})
    monkeypatch.setattr(_backend, "_launch_probe", launch)
    monkeypatch.setattr(_backend, "_device_description", lambda index: ("Tesla T4", (7, 5)))
    return probed


def test_missing_kernel_image_falls_back_with_one_warning(mock_cuda):
    from graphsam_ext import _backend

    mock_cuda.error = torch.AcceleratorError(NO_IMAGE) if hasattr(torch, "AcceleratorError") else RuntimeError(NO_IMAGE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backend.use_native("cuda:0") is False
        assert _backend.use_native(torch.device("cuda", 0)) is False
        assert _backend.use_native("cpu") is True
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    for text in ("cuda:0", "Tesla T4", "sm_75", "TORCH_CUDA_ARCH_LIST=\"7.5\"", "no kernel image", "fallback"):
        assert text in messages[0], (text, messages[0])
    assert mock_cuda == [0], "the probe runs once per device"


def test_each_device_is_probed_on_its_first_use(mock_cuda):
    from graphsam_ext import _backend

    assert _backend.use_native("cuda:0") and _backend.use_native("cuda:0")
    mock_cuda.error = RuntimeError(NO_IMAGE)
    with pytest.warns(RuntimeWarning, match="cuda:1"):
        assert not _backend.use_native("cuda:1")
    assert _backend.use_native("cuda:0"), "a device that ran the kernels keeps them"
    assert mock_cuda == [0, 1]


@pytest.mark.parametrize("message", ["CUDA error: invalid device function",
                                     "CUDA error: the provided PTX was compiled with an unsupported toolchain."])
def test_other_unrunnable_binaries_fall_back_too(mock_cuda, message):
    from graphsam_ext import _backend

    mock_cuda.error = RuntimeError(message)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch fallback"):
        assert not _backend.use_native("cuda:0")


def test_other_cuda_errors_are_not_swallowed(mock_cuda):
    """Only a missing kernel image means "fall back"; anything else (out of memory, a bad
    device) reaches the caller, and the next use probes again."""
    from graphsam_ext import _backend

    mock_cuda.error = RuntimeError("CUDA error: out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        _backend.use_native("cuda:0")
    mock_cuda.error = None
    assert _backend.use_native("cuda:0")
    assert mock_cuda == [0, 0]


def test_no_probe_while_tracing(mock_cuda, monkeypatch):
    from graphsam_ext import _backend

    mock_cuda.error = RuntimeError(NO_IMAGE)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _backend.use_native("cuda:0")
    assert mock_cuda == [] and _backend._CUDA_READY == {}, "nothing is decided while tracing"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no visible CUDA device")
def test_real_probe_runs_on_this_card():
    from graphsam_ext import _backend

    if _backend.native_library() is None or not _backend.native_library().build_info().get("cuda"):
        pytest.skip("native library built without CUDA")
    _backend._launch_probe(torch.cuda.current_device())
    assert _backend.use_native("cuda")
