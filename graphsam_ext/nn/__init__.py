"""Graph attention layers built on :func:`graphsam_ext.ops.graph_attention`, and ``Dropout`` on
:func:`graphsam_ext.ops.dropout`."""
from graphsam_ext.nn.attention import GraphAttention
from graphsam_ext.nn.dropout import Dropout, ModelDropout
from graphsam_ext.nn.local import BondMessagePassing
from graphsam_ext.nn.transformer import GraphTransformerLayer

__all__ = ["BondMessagePassing", "Dropout", "GraphAttention", "GraphTransformerLayer", "ModelDropout"]
