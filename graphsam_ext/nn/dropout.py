"""``Dropout``: a drop-in for ``torch.nn.Dropout`` on :func:`graphsam_ext.ops.dropout`."""
from __future__ import annotations

from torch import Tensor, nn

from graphsam_ext.ops.dropout import check_probability, dropout


class Dropout(nn.Module):
    r"""Inverted dropout: in training mode each element is kept with probability ``1 - p`` and
    scaled by ``1 / (1 - p)``; in eval mode (and for ``p = 0``) the input is returned as it is.

    The mask comes from a counter-based hash of (seed, element index), with the seed of each call
    drawn from torch's default CPU generator, so ``torch.manual_seed`` reproduces it on every
    device; see :mod:`graphsam_ext.ops.dropout`. The native kernels run where they are built, the
    pure-PyTorch reference (same masks) elsewhere. Unlike ``torch.nn.Dropout`` there is no
    ``inplace`` option, and ``p = 1`` is refused.

    Args:
        p: probability of dropping an element, in [0, 1).

    Shape: any; the output has the input's shape and dtype (float32, float64, bfloat16, float16).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_probability(p, "Dropout")

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
