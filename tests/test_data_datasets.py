"""Datasets: the six MoleculeNet CSVs, the embedded default, the cache, downloads and bad input.

Expected numbers are what RDKit 2026.09 gives on the shared copies; each is also recomputed here
straight from the CSV with the csv module and RDKit, independently of graphsam_ext.data.
"""
import csv
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from graphsam_ext.data import DATASET_NAMES, DATASETS, Featurizer, MoleculeDataset, load_dataset
from graphsam_ext.data import sources

Chem = pytest.importorskip("rdkit.Chem")
from rdkit import rdBase  # noqa: E402  (after the importorskip above)

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GRAPHSAM_DATA_DIR") or ROOT.parent / "shared" / "data" / "moleculenet")
needs_data = pytest.mark.skipif(not (DATA_DIR / "tox21.csv").is_file(), reason=f"MoleculeNet CSVs not found in {DATA_DIR}")

# name: (rows, kept, skipped, tasks, task type)
EXPECTED = {
    "bbbp": (2050, 2039, 11, 1, "classification"),
    "clintox": (1484, 1480, 4, 2, "classification"),
    "esol": (1128, 1128, 0, 1, "regression"),
    "lipophilicity": (4200, 4200, 0, 1, "regression"),
    "sider": (1427, 1427, 0, 27, "classification"),
    "tox21": (7831, 7823, 8, 12, "classification"),
}
# Missing (blank) labels per tox21 task among the 7823 kept molecules; 16012 in all (17%).
TOX21_MISSING = {
    "NR-AR": 565, "NR-AR-LBD": 1072, "NR-AhR": 1281, "NR-Aromatase": 2008, "NR-ER": 1637, "NR-ER-LBD": 875,
    "NR-PPAR-gamma": 1380, "SR-ARE": 1998, "SR-ATAD5": 758, "SR-HSE": 1363, "SR-MMP": 2019, "SR-p53": 1056,
}
# (mean, population std, min, max) of the regression targets over kept molecules.
REGRESSION = {
    "esol": (-3.0501, 2.0955, -11.6, 1.58),
    "lipophilicity": (2.1863, 1.2029, -1.5, 4.5),
}


@pytest.fixture(scope="module")
def datasets(shared_cache):
    if not (DATA_DIR / "tox21.csv").is_file():
        pytest.skip(f"MoleculeNet CSVs not found in {DATA_DIR}")
    return {name: load_dataset(name, data_dir=DATA_DIR, cache_dir=shared_cache) for name in EXPECTED}


def _independent_counts(name):
    """(rows, valid SMILES) from the raw CSV with csv + RDKit only."""
    spec = DATASETS[name]
    with open(DATA_DIR / spec.filename, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with rdBase.BlockLogs():
        valid = [r for r in rows if Chem.MolFromSmiles(r[spec.smiles_column].strip()) is not None]
    return rows, valid


@needs_data
@pytest.mark.parametrize("name", list(EXPECTED))
def test_kept_and_skipped_molecules_and_tasks(datasets, name):
    ds = datasets[name]
    rows, kept, skipped, tasks, task_type = EXPECTED[name]
    s = ds.summary
    assert (s["rows"], s["kept"], s["skipped"], len(ds.task_names), ds.task_type) == EXPECTED[name]
    raw_rows, valid = _independent_counts(name)
    assert (len(raw_rows), len(valid)) == (rows, kept)
    assert len(ds) == kept == len(ds.smiles) and ds.y.shape == (kept, tasks) == ds.mask.shape
    assert ds.y.dtype == torch.float32 and ds.mask.dtype == torch.bool and not torch.isnan(ds.y).any()
    assert s["rdkit_version"] == rdBase.rdkitVersion
    assert s["featurizer"] == ds.featurizer.config()
    assert s["reference_copy"] is True
    assert len(s["first_invalid"]) == min(skipped, 5)
    for entry in s["first_invalid"]:
        assert Chem.MolFromSmiles(entry["smiles"]) is None and entry["reason"]
    item = ds[0]
    assert item.graph.x.shape[1] == 146 and item.y.shape == (tasks,) and isinstance(item.smiles, str)


@needs_data
def test_task_columns_follow_the_known_layouts(datasets):
    assert datasets["bbbp"].task_names == ["p_np"]
    assert datasets["clintox"].task_names == ["FDA_APPROVED", "CT_TOX"]
    assert datasets["esol"].task_names == ["measured log solubility in mols per litre"]
    assert datasets["lipophilicity"].task_names == ["exp"]
    with open(DATA_DIR / "sider.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert datasets["sider"].task_names == header[1:]
    assert datasets["tox21"].task_names == list(TOX21_MISSING)


@needs_data
def test_tox21_missing_labels_are_masked(datasets):
    ds = datasets["tox21"]
    with open(DATA_DIR / "tox21.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with rdBase.BlockLogs():
        rows = [r for r in rows if Chem.MolFromSmiles(r["smiles"]) is not None]
    blanks = {task: sum(1 for r in rows if r[task].strip() == "") for task in TOX21_MISSING}
    assert blanks == TOX21_MISSING
    missing = (~ds.mask).sum(0).tolist()
    assert dict(zip(ds.task_names, missing)) == TOX21_MISSING
    assert ds.summary["missing_labels"] == sum(TOX21_MISSING.values()) == 16012
    assert {t: e["missing"] for t, e in ds.summary["tasks"].items()} == TOX21_MISSING
    assert torch.all(ds.y[~ds.mask] == 0)
    # Labels line up with the CSV row by row (first kept row: 0,0,1,,,0,0,1,0,0,0,0).
    assert ds.y[0].tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert ds.mask[0].tolist() == [True, True, True, False, False, True, True, True, True, True, True, True]
    for task, entry in ds.summary["tasks"].items():
        assert entry["positive"] + entry["negative"] + entry["missing"] == 7823


@needs_data
@pytest.mark.parametrize("name", list(REGRESSION))
def test_regression_target_statistics(datasets, name):
    ds = datasets[name]
    task = ds.task_names[0]
    _, valid = _independent_counts(name)
    values = [float(r[task]) for r in valid]
    mean, std, low, high = REGRESSION[name]
    assert statistics.fmean(values) == pytest.approx(mean, abs=1e-4)
    assert statistics.pstdev(values) == pytest.approx(std, abs=1e-4)
    assert (min(values), max(values)) == (low, high)
    entry = ds.summary["tasks"][task]
    assert entry["count"] == len(values) and entry["missing"] == 0
    assert entry["mean"] == pytest.approx(mean, abs=1e-4) and entry["std"] == pytest.approx(std, abs=1e-4)
    assert entry["min"] == pytest.approx(low) and entry["max"] == pytest.approx(high)
    assert torch.allclose(ds.y[:, 0].double(), torch.tensor(values, dtype=torch.float64), atol=1e-5)


@needs_data
def test_second_load_comes_from_the_cache_with_identical_tensors(datasets, shared_cache):
    first = datasets["tox21"]
    again = load_dataset("tox21", data_dir=DATA_DIR, cache_dir=shared_cache)
    assert again.summary["cached"] is True and Path(again.summary["cache_file"]).is_file()
    for attr in ("x", "edge_index", "edge_attr", "node_ptr", "edge_ptr", "y", "mask"):
        assert torch.equal(getattr(first, attr), getattr(again, attr)), attr
    assert again.smiles == first.smiles and again.task_names == first.task_names
    assert {k: v for k, v in again.summary.items() if k not in ("cached", "cache_file")} == {
        k: v for k, v in first.summary.items() if k not in ("cached", "cache_file")
    }
    for i in (0, 100, len(first) - 1):
        a, b = first[i], again[i]
        assert torch.equal(a.graph.x, b.graph.x) and torch.equal(a.graph.edge_index, b.graph.edge_index)


@needs_data
def test_cache_key_depends_on_featurizer_and_file_content(tmp_path, datasets):
    plain = load_dataset("esol", data_dir=DATA_DIR, cache_dir=tmp_path)
    pairs = load_dataset("esol", data_dir=DATA_DIR, cache_dir=tmp_path, featurizer=Featurizer(pair_distance=2))
    assert plain.summary["cached"] is False and pairs.summary["cached"] is False
    assert pairs.edge_attr.shape[1] == 18 and plain.edge_attr.shape[1] == 14
    assert len(list((tmp_path / "featurized").glob("*.pt"))) == 2
    # An edited copy of the file is a different dataset: a new cache entry, not a stale hit.
    edited = tmp_path / "esol_edited.csv"
    lines = (DATA_DIR / "esol.csv").read_text().splitlines()
    edited.write_text("\n".join(lines[:50]) + "\n")
    small = load_dataset(path=edited, smiles_column="smiles", target_columns=["measured log solubility in mols per litre"], cache_dir=tmp_path)
    assert len(small) == 49 and small.summary["cached"] is False
    assert torch.equal(small.y, plain.y[:49])


def test_corrupt_cache_file_is_replaced(tmp_path):
    csv_path = tmp_path / "mini.csv"
    csv_path.write_text("smiles,y\nCCO,1.5\nc1ccccc1,2.5\n")
    first = load_dataset(path=csv_path, cache_dir=tmp_path)
    cache_file = Path(first.summary["cache_file"])
    cache_file.write_bytes(b"not a torch file")
    again = load_dataset(path=csv_path, cache_dir=tmp_path)
    assert again.summary["cached"] is False and torch.equal(again.y, first.y)
    assert load_dataset(path=csv_path, cache_dir=tmp_path).summary["cached"] is True


def test_cache_dir_false_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "user-cache"))
    csv_path = tmp_path / "mini.csv"
    csv_path.write_text("smiles,y\nCCO,1\nCC,0\n")
    ds = load_dataset(path=csv_path, cache_dir=False)
    assert ds.task_type == "classification" and "cache_file" not in ds.summary
    assert not (tmp_path / "user-cache").exists()


def test_embedded_default_loads_offline_from_the_rdkit_package_only(tmp_path):
    """In a fresh interpreter: no socket is opened and every file read lies inside an installed package."""
    code = f"""
        import json, os, sys
        os.environ["GRAPHSAM_DATA_DIR"] = {str(tmp_path / "nowhere")!r}
        os.environ["GRAPHSAM_CACHE_DIR"] = {str(tmp_path / "cache")!r}
        import graphsam_ext.data as D
        from graphsam_ext.data._rdkit import rdkit_modules
        rdkit_modules()
        opened, network = [], []
        def hook(event, args):
            if event == "open" and isinstance(args[0], (str, bytes)):
                opened.append(os.fsdecode(args[0]))
            elif event.startswith("socket.") or event.startswith("urllib."):
                network.append(event)
        sys.addaudithook(hook)
        ds = D.load_dataset(cache_dir=False)
        print(json.dumps({{"n": len(ds), "tasks": ds.task_names, "type": ds.task_type, "opened": opened,
                          "network": network, "source": ds.summary["source"], "skipped": ds.summary["skipped"]}}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["n"], report["tasks"], report["type"], report["skipped"]) == (1017, ["pIC50"], "regression", 0)
    assert report["network"] == []
    import rdkit
    import graphsam_ext

    allowed = [Path(rdkit.__file__).parent.resolve(), Path(graphsam_ext.__file__).parent.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    data_files = [p for p in report["opened"] if p.endswith((".smi", ".csv"))]
    assert {Path(p).name for p in data_files} == {"CHEMBL2321810.smi", "CHEMBL2321810_act.csv"}
    for path in report["opened"]:
        resolved = Path(path).resolve()
        assert any(resolved.is_relative_to(root) for root in allowed), path
    assert report["source"].startswith("rdkit:")


def test_default_is_the_same_with_and_without_name(tmp_path):
    a = load_dataset(cache_dir=tmp_path)
    b = load_dataset("default", cache_dir=tmp_path)
    assert b.summary["cached"] is True and torch.equal(a.y, b.y) and len(a) == 1017
    assert a.summary["tasks"]["pIC50"]["min"] == pytest.approx(4.27)
    assert a.summary["tasks"]["pIC50"]["max"] == pytest.approx(9.22)


# ----- bad input -------------------------------------------------------------------------------


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as info:
        load_dataset("tox22")
    for name in DATASET_NAMES:
        assert name in str(info.value)
    assert set(DATASET_NAMES) == {"bbbp", "tox21", "sider", "clintox", "esol", "lipophilicity", "default"}


def test_name_and_path_together_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="name=.*path="):
        load_dataset("bbbp", path=tmp_path / "x.csv")


def test_missing_file_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="path="):
        load_dataset(path=tmp_path / "absent.csv", cache_dir=False)


def test_missing_smiles_column_lists_available_columns(tmp_path):
    path = _write(tmp_path, """
        molecule,activity
        CCO,1.0
    """)
    with pytest.raises(ValueError, match=r"smiles_column.*available columns: \['molecule', 'activity'\]"):
        load_dataset(path=path, cache_dir=False)
    with pytest.raises(ValueError, match=r"smiles_column='SMILES'.*available columns: \['molecule', 'activity'\]"):
        load_dataset(path=path, smiles_column="SMILES", cache_dir=False)
    ds = load_dataset(path=path, smiles_column="molecule", cache_dir=False)
    assert ds.task_names == ["activity"]


def test_missing_target_column_lists_available_columns(tmp_path):
    path = _write(tmp_path, """
        smiles,logS,id
        CCO,1.0,a
    """)
    with pytest.raises(ValueError, match=r"\['logP'\] not found; available columns: \['smiles', 'logS', 'id'\]"):
        load_dataset(path=path, target_columns=["logP"], cache_dir=False)


def test_no_numeric_target_column_asks_for_target_columns(tmp_path):
    path = _write(tmp_path, """
        smiles,name
        CCO,ethanol
    """)
    with pytest.raises(ValueError, match="target_columns="):
        load_dataset(path=path, cache_dir=False)


@needs_data
def test_missing_column_on_a_named_set_lists_its_columns():
    with pytest.raises(ValueError, match="available columns: .*'p_np'"):
        load_dataset("bbbp", data_dir=DATA_DIR, target_columns=["p_np_typo"], cache_dir=False)


def test_all_invalid_smiles_is_a_clear_error(tmp_path):
    path = _write(tmp_path, """
        smiles,y
        not_a_molecule,1
        C1CC,0
        [Xx],1
    """)
    with pytest.raises(ValueError, match=r"none of the 3 SMILES in column 'smiles' could be read.*line 2 'not_a_molecule'"):
        load_dataset(path=path, cache_dir=False)


def test_non_numeric_target_names_the_row(tmp_path):
    path = _write(tmp_path, """
        smiles,y
        CCO,1.5
        CCN,abc
        CCC,2.0
    """)
    with pytest.raises(ValueError, match=r"line 3 \(SMILES 'CCN'\) has non-numeric value 'abc' in target column 'y'"):
        load_dataset(path=path, cache_dir=False)


def test_classification_requested_on_real_values_names_the_row(tmp_path):
    path = _write(tmp_path, """
        smiles,y
        CCO,1
        CCN,2.5
    """)
    with pytest.raises(ValueError, match=r"line 3 has 2.5 in column 'y'; use task_type='regression'"):
        load_dataset(path=path, task_type="classification", cache_dir=False)
    with pytest.raises(ValueError, match="task_type must be one of"):
        load_dataset(path=path, task_type="ranking", cache_dir=False)


def test_invalid_rows_are_skipped_counted_and_reported_quietly(tmp_path, capfd):
    path = _write(tmp_path, """
        Compound ID,num,SMILES,active,toxic
        a,1,CCO,1,
        b,2,C1CC,0,1
        c,3,c1ccccc1,,0
        d,4,  CC(=O)O  ,0,nan
        e,5,,1,1
    """)
    ds = load_dataset(path=path, cache_dir=False)
    # Defaults: the "SMILES" column; numeric non-identifier columns as targets ("num" is an id).
    assert ds.task_names == ["active", "toxic"] and ds.task_type == "classification"
    s = ds.summary
    assert (s["rows"], s["kept"], s["skipped"]) == (5, 3, 2)
    assert [(e["line"], e["smiles"]) for e in s["first_invalid"]] == [(3, "C1CC"), (6, "")]
    assert ds.smiles == ["CCO", "c1ccccc1", "CC(=O)O"]
    assert ds.y.tolist() == [[1, 0], [0, 0], [0, 0]]
    assert ds.mask.tolist() == [[True, False], [False, True], [True, False]]
    assert s["tasks"]["active"] == {"count": 2, "missing": 1, "positive": 1, "negative": 1}
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_regression_is_inferred_and_can_be_overridden(tmp_path):
    path = _write(tmp_path, """
        smiles,value
        CCO,0
        CCN,1
        CCC,1
    """)
    assert load_dataset(path=path, cache_dir=False).task_type == "classification"
    assert load_dataset(path=path, task_type="regression", cache_dir=False).task_type == "regression"
    path2 = _write(tmp_path, "smiles,value\nCCO,0.25\nCCN,-3\n", name="reg.csv")
    ds = load_dataset(path=path2, cache_dir=False)
    assert ds.task_type == "regression" and ds.y[:, 0].tolist() == [0.25, -3.0]


# ----- lookup order and downloads (never the real network) -------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No local copies anywhere and a downloader that fails like a machine without network."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("GRAPHSAM_DATA_DIR", str(tmp_path / "env-dir"))
    monkeypatch.setenv("GRAPHSAM_CACHE_DIR", str(tmp_path / "user-cache"))
    calls = []

    def no_network(url, destination, timeout=60.0):
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "fetch_url", no_network)
    return empty, calls


def test_offline_missing_file_says_where_it_looked_and_how_to_fix(offline, tmp_path):
    empty, calls = offline
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("bbbp", data_dir=empty)
    message = str(info.value)
    assert calls == [DATASETS["bbbp"].url]
    assert str(empty / "bbbp.csv") in message
    assert str(tmp_path / "env-dir" / "bbbp.csv") in message and "$GRAPHSAM_DATA_DIR" in message
    assert str(tmp_path / "user-cache" / "datasets" / "bbbp.csv") in message
    assert "network is unreachable" in message and DATASETS["bbbp"].url in message
    assert "data_dir=" in message and "path=" in message
    assert not (tmp_path / "user-cache" / "datasets" / "bbbp.csv").exists()


@needs_data
def test_lookup_order_data_dir_then_env_then_cache(offline, tmp_path, monkeypatch):
    empty, calls = offline
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "esol.csv").write_bytes((DATA_DIR / "esol.csv").read_bytes())
    env_dir = tmp_path / "env-dir"
    env_dir.mkdir()
    (env_dir / "esol.csv").write_text("smiles,measured log solubility in mols per litre\nCCO,1\n")
    assert sources.resolve_named("esol", data_dir=explicit)[1] == explicit / "esol.csv"
    assert sources.resolve_named("esol", data_dir=empty)[1] == env_dir / "esol.csv"
    # DeepChem's own file name is found too.
    (tmp_path / "user-cache" / "datasets").mkdir(parents=True)
    (tmp_path / "user-cache" / "datasets" / "Lipophilicity.csv").write_text("x")
    assert sources.resolve_named("lipophilicity", data_dir=empty)[1].name == "Lipophilicity.csv"
    assert calls == []


@needs_data
def test_download_is_checksummed_and_decompressed(offline, tmp_path, monkeypatch):
    """A fake server: plain CSV with the pinned MD5, a gzip file, and a corrupted download."""
    empty, _ = offline
    served = {}

    def fake_fetch(url, destination, timeout=60.0):
        Path(destination).write_bytes(served[url])

    monkeypatch.setattr(sources, "fetch_url", fake_fetch)
    bbbp = DATA_DIR / "bbbp.csv"
    served[DATASETS["bbbp"].url] = bbbp.read_bytes()  # the shared copy has DeepChem's pinned MD5
    spec, path = sources.resolve_named("bbbp", data_dir=empty)
    assert path == tmp_path / "user-cache" / "datasets" / "bbbp.csv" and path.read_bytes() == bbbp.read_bytes()

    clintox = (DATA_DIR / "clintox.csv").read_bytes()
    packed = gzip.compress(clintox)
    monkeypatch.setitem(
        sources.DATASETS, "clintox",
        sources.DatasetSpec(**{**DATASETS["clintox"].__dict__, "download_md5": hashlib.md5(packed).hexdigest()}),
    )
    served[DATASETS["clintox"].url] = packed
    _, path = sources.resolve_named("clintox", data_dir=empty)
    assert path.name == "clintox.csv" and path.read_bytes() == clintox

    served[DATASETS["esol"].url] = b"smiles,y\nCCO,1\n"
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        sources.resolve_named("esol", data_dir=empty)
    assert not (tmp_path / "user-cache" / "datasets" / "esol.csv").exists()


def test_dataset_is_a_torch_dataset_with_items():
    assert issubclass(MoleculeDataset, torch.utils.data.Dataset)
