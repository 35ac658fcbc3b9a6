"""Native vs fallback is decided in one place; a missing library warns once and falls back."""
import subprocess
import sys
import textwrap

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
