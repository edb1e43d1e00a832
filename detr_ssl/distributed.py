"""The two collective helpers the losses need; both are no-ops in a single process.

Accelerate (and torchrun) initialise ``torch.distributed``; nothing here initialises it, so the same
code runs unchanged in one process on a laptop and across many GPUs.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "is_distributed", "world_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all processes, as a new tensor (a copy when not distributed).

    The input is left untouched, so a caller's value never changes under its feet.
    """
    total = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
