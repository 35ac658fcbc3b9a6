"""SAM-family optimizers over fused flat-buffer kernels."""
from graphsam_ext.optim.aesam import AESAM
from graphsam_ext.optim.flat import FlatParams
from graphsam_ext.optim.graphsam import GraphSAM, SAMOne, rho_at_epoch
from graphsam_ext.optim.looksam import LookSAM
from graphsam_ext.optim.sam import SAM

__all__ = ["SAM", "GraphSAM", "SAMOne", "LookSAM", "AESAM", "FlatParams", "rho_at_epoch"]
