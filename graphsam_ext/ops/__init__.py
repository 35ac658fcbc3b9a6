"""Typed wrappers of the native ops; each falls back to ``ops.reference`` where no kernel exists."""
from graphsam_ext.ops.sam import (
    adam_step_,
    direction_update_,
    perturb_,
    restore_,
    sgd_step_,
    sum_squares,
    unscale_sum_squares_,
    zero_,
)
from graphsam_ext.ops.graph_attention import build_csr, graph_attention
from graphsam_ext.ops.dropout import dropout, draw_dropout_seed

__all__ = ["sum_squares", "unscale_sum_squares_", "zero_", "perturb_", "restore_", "direction_update_",
           "adam_step_", "sgd_step_", "graph_attention", "build_csr",
           "dropout", "draw_dropout_seed"]
