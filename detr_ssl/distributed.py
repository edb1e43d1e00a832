"""The collective helpers the losses need; all are no-ops in a single process.

Accelerate (and torchrun) initialise ``torch.distributed``; nothing here initialises it, so the same
code runs unchanged in one process on a laptop and across many GPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_cat", "all_gather_ragged", "all_reduce_max", "all_reduce_sum", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's index in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


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


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over all processes, as a new tensor."""
    result = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(result, op=dist.ReduceOp.MAX)
    return result


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Every process's ``tensor`` (same shape everywhere) concatenated along dim 0 in rank order; no
    gradient flows through it (keys for a queue, not predictions)."""
    tensor = tensor.detach()
    if not is_distributed():
        return tensor.clone()
    blocks = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(blocks, tensor.contiguous())
    return torch.cat(blocks)


def all_gather_ragged(rows: Tensor) -> Tensor:
    """Every process's ``(N_p, ...)`` rows concatenated along dim 0 in rank order, where ``N_p`` may differ
    between processes (e.g. proposal counts): the counts are exchanged first and each block padded to the
    largest for ``all_gather``. No gradient flows through it."""
    rows = rows.detach()
    if not is_distributed():
        return rows.clone()
    counts = all_gather_cat(torch.tensor([len(rows)], device=rows.device)).tolist()
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: len(rows)] = rows
    blocks = all_gather_cat(padded).split(max(counts)) if max(counts) else [padded] * len(counts)
    return torch.cat([block[:count] for block, count in zip(blocks, counts)])
