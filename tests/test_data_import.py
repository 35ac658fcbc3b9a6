"""The data package imports and batches without RDKit (the GPU test machine has none)."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_package_imports_and_collates_without_rdkit():
    code = """
        import sys
        sys.modules["rdkit"] = None  # any `import rdkit...` now raises ImportError
        import torch
        import graphsam_ext
        import graphsam_ext.data as D
        assert D.ATOM_FEATURE_DIM == 146 and D.BOND_FEATURE_DIM == 14
        g = D.Graph(torch.zeros(2, 146), torch.tensor([[0, 1], [1, 0]]), torch.zeros(2, 14))
        batch = D.collate([g, g])
        assert batch.rowptr.tolist() == [0, 1, 2, 3, 4]
        for call in (lambda: D.Featurizer()("CCO"), lambda: D.load_dataset(cache_dir=False)):
            try:
                call()
            except ImportError as exc:
                assert "pip install rdkit" in str(exc), exc
            else:
                raise AssertionError("expected ImportError without RDKit")
        # Nothing tried to load an RDKit submodule behind our back at import time either.
        assert not [m for m in sys.modules if m.startswith("rdkit.")], sorted(sys.modules)
        print("ok")
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
