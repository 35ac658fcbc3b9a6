"""SAM-family optimizers over fused flat-buffer kernels."""
from graphsam_ext.optim.flat import FlatParams
from graphsam_ext.optim.graphsam import GraphSAM, rho_at_epoch
from graphsam_ext.optim.sam import SAM

__all__ = ["SAM", "GraphSAM", "FlatParams", "rho_at_epoch"]
