"""Momentum (EMA) encoders: the key / target networks of MoCo, DenseCL, BYOL and PixPro.

The target network gets no gradient; after each optimiser step it moves a little towards the online
network, so its outputs change slowly and make stable targets.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["cosine_momentum", "ema_update_", "momentum_copy"]


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule (also PixPro's): ``base`` at step 0 rising along a half cosine to 1 at
    ``total_steps`` and held there (a run may outlast the planned schedule), so the target freezes as
    training ends. ``total_steps <= 0`` means no schedule: ``base``."""
    if total_steps <= 0:
        return base
    step = min(step, total_steps)
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters never require gradients: the initial target network."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """In place: every target parameter <- ``momentum * target + (1 - momentum) * online``.

    The expression is evaluated in exactly that form (not ``lerp_``), so DenseCL's results do not change by
    round-off when it uses this. With ``copy_buffers`` the target's buffers (BatchNorm statistics) are
    overwritten with the online network's, as MoCo and DenseCL do; without, they keep their own.
    The two modules must have the same structure.
    """
    for key, query in zip(target.parameters(), online.parameters(), strict=True):
        key.copy_(momentum * key + (1 - momentum) * query)
    if copy_buffers:
        for key, query in zip(target.buffers(), online.buffers(), strict=True):
            key.copy_(query)
