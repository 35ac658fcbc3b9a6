"""Shared test helpers: devices to run on, and where the MoleculeNet files are."""
import os
import pathlib
import tempfile

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("GRAPHSAM_DATA_DIR", str(ROOT.parent / "shared" / "data" / "moleculenet"))
# keep featurization caches of the test run out of the user's home directory
os.environ.setdefault("GRAPHSAM_CACHE_DIR", tempfile.mkdtemp(prefix="graphsam-test-cache-"))

REQUIRE_NATIVE = "GRAPHSAM_REQUIRE_NATIVE"


def pytest_sessionstart(session):
    """With GRAPHSAM_REQUIRE_NATIVE=1 (``make test``, CI) a missing native library fails the run
    instead of quietly skipping the modules that test the kernels."""
    if os.environ.get(REQUIRE_NATIVE, "").strip().lower() in ("1", "true", "yes", "on"):
        from graphsam_ext import _backend

        info = _backend.build_info()
        if not info["native"]:
            pytest.exit(f"{REQUIRE_NATIVE}=1 but the native library did not load ({info['reason']}); "
                        "build it with `make build`, or unset the variable to run the fallback tests only",
                        returncode=1)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no visible CUDA device"))
DEVICES = ["cpu", CUDA]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One featurization cache for every data test module of the session."""
    path = tmp_path_factory.getbasetemp() / "graphsam-data-cache"
    path.mkdir(exist_ok=True)
    return path
