"""Lazy access to RDKit.

``import graphsam_ext`` and ``import graphsam_ext.data`` must work on machines without RDKit
(the GPU test machine has none), so every RDKit import in the package goes through
:func:`rdkit_modules`, called only when a SMILES string actually has to be parsed.
"""
from __future__ import annotations

import types

_INSTALL_HINT = (
    "graphsam_ext.data needs RDKit to read SMILES: install it with `pip install rdkit` "
    "(or `pip install graphsam-ext[chem]`)"
)


def rdkit_modules() -> types.SimpleNamespace:
    """Return the RDKit modules the data pipeline uses, importing them on first use.

    Raises ImportError with the install command when RDKit is missing.
    """
    try:
        from rdkit import Chem, RDConfig, rdBase
        from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors, rdPartialCharges
        from rdkit.Chem.Scaffolds import MurckoScaffold
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    return types.SimpleNamespace(
        Chem=Chem,
        RDConfig=RDConfig,
        rdBase=rdBase,
        rdPartialCharges=rdPartialCharges,
        Crippen=Crippen,
        Descriptors=Descriptors,
        rdMolDescriptors=rdMolDescriptors,
        MurckoScaffold=MurckoScaffold,
    )


def rdkit_version() -> str:
    return rdkit_modules().rdBase.rdkitVersion
