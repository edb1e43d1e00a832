"""Mixed precision: the MSDA op always computes with autocast off (see `multi_scale_deformable_attention`)."""

from __future__ import annotations

import contextlib

import torch


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device``'s type (a no-op for types without autocast, such
    as ``meta``, where ``torch.autocast`` itself would raise)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
