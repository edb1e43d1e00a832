"""A queue of earlier keys, the negatives of MoCo-style InfoNCE (DenseCL, and dense tasks built like it).

The queue is a pair of buffers, so checkpoints save and resume it, and keys from every process are
enqueued in rank order, so all processes hold the same queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ssl.distributed import all_gather_ragged

__all__ = ["KeyQueue"]


class KeyQueue(nn.Module):
    """Ring buffer of ``length`` keys of size ``dim``, starting as random unit vectors.

    Losses read :meth:`snapshot` (a copy: :meth:`push` writes in place, after the loss is built but before
    backward needs the old keys) and then :meth:`push` the batch's keys.
    """

    keys: Tensor
    pointer: Tensor

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"a queue needs a positive length, got {length}")
        self.register_buffer("keys", F.normalize(torch.randn(length, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def snapshot(self) -> Tensor:
        """``(length, dim)`` copy of the keys, safe to use in a loss across a later :meth:`push`."""
        return self.keys.clone()

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Gathers ``(N_p, dim)`` keys from every process (rank order; ``N_p`` may differ between processes,
        e.g. one key per proposal) and writes them over the oldest entries; when more than ``length`` arrive
        at once only the newest ``length`` are kept. Every process must call it."""
        length = len(self.keys)
        gathered = all_gather_ragged(keys)[-length:]
        rows = (self.pointer + torch.arange(len(gathered), device=self.keys.device)) % length
        self.keys[rows] = gathered.to(device=self.keys.device, dtype=self.keys.dtype)
        self.pointer.copy_((self.pointer + len(gathered)) % length)
