"""Adapters to the frameworks molecular-ML code already uses; each is an optional import.

- :mod:`graphsam_ext.integrations.lightning`: ``SAMCallback`` for Lightning's automatic
  optimization (GraphSAM's epoch boundaries from the Trainer, refusal of the settings that
  cannot be right with a re-evaluating optimizer).
- :mod:`graphsam_ext.integrations.chemprop`: train a chemprop v2 ``MPNN`` with GraphSAM, SAM or
  ASAM inside chemprop's own Trainer, keeping chemprop's learning-rate schedule.

``import graphsam_ext`` imports none of them; each imports its framework when it is imported.
The PyG path needs no adapter: ``MolecularGraphTransformer`` takes a ``torch_geometric.data.Batch``.
"""
