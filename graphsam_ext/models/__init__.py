"""Models built from :mod:`graphsam_ext.nn` layers."""
from graphsam_ext.models.readout import READOUT_NAMES, Readout
from graphsam_ext.models.transformer import ATTENTION_NAMES, ModelConfig, MolecularGraphTransformer

__all__ = ["MolecularGraphTransformer", "ModelConfig", "Readout", "READOUT_NAMES", "ATTENTION_NAMES"]
