"""Graph attention layers built on :func:`graphsam_ext.ops.graph_attention`."""
from graphsam_ext.nn.attention import GraphAttention
from graphsam_ext.nn.local import BondMessagePassing
from graphsam_ext.nn.transformer import GraphTransformerLayer

__all__ = ["BondMessagePassing", "GraphAttention", "GraphTransformerLayer"]
