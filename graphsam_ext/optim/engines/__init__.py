"""The three engines of the SAM-family optimizers, behind one interface (``interface.Engine``).

- ``reference``: a loop over parameter tensors with ``ops.reference`` and torch's single-tensor
  Adam / SGD; readable, and the oracle of the parity tests.
- ``foreach``: the same math with ``torch._foreach_*`` ops and torch's foreach Adam / SGD.
- ``fused``: ``FlatParams`` buffers and the native kernels; restore and base update are one pass,
  and nothing reads a device value back to the host.

Every engine keeps the optimizer's per-parameter state under the same keys (the base update's
``BASE_UPDATES[name].state_keys`` and ``step``, plus the buffers the optimizer names, e.g.
``direction``), so ``state_dict()`` has one layout whatever the implementation.
"""
from graphsam_ext.optim.engines.foreach import ForeachEngine
from graphsam_ext.optim.engines.fused import FusedEngine, UpdateRange
from graphsam_ext.optim.engines.interface import GRAD, Engine, Term, trainable_groups
from graphsam_ext.optim.engines.reference import ReferenceEngine

ENGINES = {"reference": ReferenceEngine, "foreach": ForeachEngine, "fused": FusedEngine}

__all__ = ["ENGINES", "Engine", "Term", "GRAD", "ReferenceEngine", "ForeachEngine", "FusedEngine", "UpdateRange",
           "trainable_groups"]
