"""Where dataset files come from: the six MoleculeNet sets, the embedded default, downloads.

Lookup order for a named set (first hit wins):
  1. ``data_dir`` passed by the caller,
  2. the directory in the environment variable ``GRAPHSAM_DATA_DIR``,
  3. ``<user cache>/datasets`` (see :func:`default_cache_dir`),
then a download from MoleculeNet's public bucket into the user cache, verified by MD5.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "GRAPHSAM_DATA_DIR"
CACHE_DIR_ENV = "GRAPHSAM_CACHE_DIR"
_BUCKET = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/"


@dataclass(frozen=True)
class DatasetSpec:
    """A named MoleculeNet set: file layout, task type and where to download it.

    download_md5: MD5 of the file as served (compressed for .gz), the values TorchDrug pins for
        the same DeepChem files (torchdrug/datasets/<name>.py); the plain-CSV ones equal the MD5
        of the copies this project is tested on.
    csv_sha256: SHA-256 of the CSV this project's tests were run on (../shared/data/moleculenet);
        a file with another hash still loads, and the summary says it differs.
    """

    name: str
    filename: str
    smiles_column: str
    target_columns: tuple | None  # None: every column except the SMILES column
    task_type: str
    url: str
    download_md5: str
    csv_sha256: str


DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "bbbp", "bbbp.csv", "smiles", ("p_np",), "classification", _BUCKET + "BBBP.csv",
            "66286cb9e6b148bd75d80c870df580fb",
            "d07a38487aeac5cee5508413e468043ef3097451d2a112701c2d60be9ec6b662",
        ),
        DatasetSpec(
            "tox21", "tox21.csv", "smiles",
            ("NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD", "NR-PPAR-gamma",
             "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53"),
            "classification", _BUCKET + "tox21.csv.gz",
            "2882d69e70bba0fec14995f26787cc25",
            "7d7e7facd853a63e79ddce4e9c3fcb7a0d83a1c300b603031c0f2c64fbe77761",
        ),
        DatasetSpec(
            "sider", "sider.csv", "smiles", None, "classification", _BUCKET + "sider.csv.gz",
            "77c0ef421f7cc8ce963c5836c8761fd2",
            "71efc6ac4ca82d6545bc512509863281be0f17234afd7adaf71a71899988302e",
        ),
        DatasetSpec(
            "clintox", "clintox.csv", "smiles", ("FDA_APPROVED", "CT_TOX"), "classification",
            _BUCKET + "clintox.csv.gz",
            "db4f2df08be8ae92814e9d6a2d015284",
            "9999816e760dd838358b5d88e81cea2fc062be4458ffa412ceecdba4f88a67b6",
        ),
        DatasetSpec(
            # The file also holds "ESOL predicted log solubility ...", a model's output: never a target.
            "esol", "esol.csv", "smiles", ("measured log solubility in mols per litre",), "regression",
            _BUCKET + "delaney-processed.csv",
            "0c90a51668d446b9e3ab77e67662bd1c",
            "8c06a76f0c6487d29ab0f903e6a7a7139f189ab3c1178f159c8be8964602f189",
        ),
        DatasetSpec(
            "lipophilicity", "lipophilicity.csv", "smiles", ("exp",), "regression", _BUCKET + "Lipophilicity.csv",
            "85a0e1cb8b38b0dfc3f96ff47a57f0ab",
            "aed41590cb30609d51d8e08ad3ff06495a76e80e211358801f596b10da69bacd",
        ),
    )
}
DEFAULT_NAME = "default"
DATASET_NAMES = (*DATASETS, DEFAULT_NAME)

# The embedded default: a ChEMBL series shipped with RDKit's FreeWilson example
# (RDConfig.RDContribDir/FreeWilson/data): SMILES + ChEMBL id in the .smi file, id + pIC50 in
# the _act.csv file.
DEFAULT_TASK = "pIC50"
_DEFAULT_SMI = "CHEMBL2321810.smi"
_DEFAULT_ACT = "CHEMBL2321810_act.csv"


def default_cache_dir() -> Path:
    """``$GRAPHSAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphsam-ext``, else ``~/.cache/graphsam-ext``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "graphsam-ext"


def file_sha256(*paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def fetch_url(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``destination`` (the one function that touches the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out)


def _download(spec: DatasetSpec, target: Path) -> None:
    """Fetch ``spec.url``, check its MD5, decompress .gz, then move it to ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / Path(spec.url).name
        fetch_url(spec.url, raw)
        md5 = hashlib.md5(raw.read_bytes()).hexdigest()
        if md5 != spec.download_md5:
            raise OSError(
                f"checksum mismatch for {spec.url}: MD5 {md5}, expected {spec.download_md5}; "
                "the server's file changed or the download was corrupted"
            )
        if raw.suffix == ".gz":
            plain = Path(tmp) / spec.filename
            with gzip.open(raw, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            raw = plain
        os.replace(raw, target)


def resolve_named(name: str, data_dir=None, cache_dir=None) -> tuple[DatasetSpec, Path]:
    """The spec and local CSV of a named MoleculeNet set, downloading it if no copy is found."""
    spec = DATASETS[name]
    candidates = []
    if data_dir is not None:
        candidates.append(("data_dir", Path(data_dir).expanduser()))
    if os.environ.get(DATA_DIR_ENV):
        candidates.append((f"${DATA_DIR_ENV}", Path(os.environ[DATA_DIR_ENV]).expanduser()))
    download_dir = (Path(cache_dir) if cache_dir else default_cache_dir()) / "datasets"
    candidates.append(("user cache", download_dir))
    for _, directory in candidates:
        # Accept DeepChem's own file name too, for users who already downloaded the sets.
        for filename in (spec.filename, Path(spec.url).name.removesuffix(".gz")):
            path = directory / filename
            if path.is_file():
                return spec, path
    target = download_dir / spec.filename
    try:
        _download(spec, target)
    except OSError as exc:
        looked = "; ".join(f"{label}: {directory / spec.filename}" for label, directory in candidates)
        raise FileNotFoundError(
            f"dataset {name!r} not found locally (looked in {looked}) and the download from "
            f"{spec.url} failed ({exc}). Fix: download {spec.url} yourself (gunzip it if it ends "
            f"in .gz), save it as {spec.filename} and pass data_dir=<its folder> or set "
            f"{DATA_DIR_ENV}; or load it with path=<file.csv>"
        ) from exc
    return spec, target


def default_files() -> tuple[Path, Path]:
    """(SMILES file, activity file) of the embedded default set inside the RDKit installation."""
    from graphsam_ext.data._rdkit import rdkit_modules

    folder = Path(rdkit_modules().RDConfig.RDContribDir) / "FreeWilson" / "data"
    smi, act = folder / _DEFAULT_SMI, folder / _DEFAULT_ACT
    if not (smi.is_file() and act.is_file()):
        raise FileNotFoundError(
            f"the embedded default dataset is missing from this RDKit installation (expected "
            f"{smi} and {act}); reinstall RDKit from its wheel (`pip install --force-reinstall rdkit`) "
            "or load a dataset with name=... or path=..."
        )
    return smi, act


def read_default_rows() -> tuple[list[tuple[int, list[str]]], list[str], str]:
    """Rows (line, [SMILES, pIC50 text]) of the embedded default, its column names and source."""
    smi, act = default_files()
    activity = {}
    with open(act, newline="") as handle:
        lines = handle.read().splitlines()
    for line in lines[1:]:
        if line.strip():
            compound, value = line.split(",")[:2]
            activity[compound.strip()] = value.strip()
    rows = []
    with open(smi) as handle:
        for line_number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            smiles, compound = parts[0], parts[1] if len(parts) > 1 else ""
            rows.append((line_number, [smiles, activity.get(compound, "")]))
    return rows, ["smiles", DEFAULT_TASK], f"rdkit:Contrib/FreeWilson/data/{_DEFAULT_SMI}+{_DEFAULT_ACT}"
