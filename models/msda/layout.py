"""How small operands of the deformable-attention point arithmetic are laid out in memory."""

from __future__ import annotations

from torch import Tensor


def spelled_out(small: Tensor, *shape: int) -> Tensor:
    """``small`` expanded to ``shape`` and copied into memory.

    The point tensors are ``(..., M, L, P, 2)``. An operand that broadcasts along ``P`` or ``M`` makes the
    elementwise kernels loop over runs of just two (or ``P``) values, and such short loops made those
    operations several times slower than their size; spelled out over the trailing dimensions, it lets
    them run along the contiguous innermost values.
    """
    return small.expand(*shape).contiguous()
