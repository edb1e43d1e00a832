"""Adapter for mmcv's CUDA kernel (``mmcv.ops.multi_scale_deform_attn``), an optional GPU extra.

mmcv is never required: it is looked up on first use (never at import of this package) and the outcome
is cached. It has no CPU kernel, so callers must also check the device (see `dispatch`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

_IM2COL_STEP = 64  # images per kernel launch, mmcv's customary value


@functools.cache
def _load() -> tuple[Any, str]:
    """(mmcv's autograd Function or None, why it is unavailable)."""
    try:
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
    except Exception as error:  # not only ImportError: a kernel built for another torch fails as OSError etc.
        return None, f"{type(error).__name__}: {error}"
    return MultiScaleDeformableAttnFunction, ""


def mmcv_unavailable_reason() -> str | None:
    """None when mmcv's op imports, otherwise the import error, for messages."""
    function, reason = _load()
    return None if function is not None else reason


def _im2col_step(batch: int) -> int:
    """mmcv requires the batch to be a multiple of the step: the largest divisor of ``batch`` up to 64."""
    return max(step for step in range(1, min(batch, _IM2COL_STEP) + 1) if batch % step == 0)


def ms_deform_attn_mmcv(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """mmcv's kernel with the `ms_deform_attn_reference` contract; CUDA tensors, float32 or float64.

    Args and returns as `ms_deform_attn_reference`: value ``(N, S, M, D)``, spatial_shapes ``(L, 2)``,
    level_start_index ``(L,)``, sampling_locations ``(N, Lq, M, L, P, 2)``, attention_weights
    ``(N, Lq, M, L, P)`` -> ``(N, Lq, M * D)``.
    """
    function, reason = _load()
    if function is None:
        raise RuntimeError(f"mmcv's multi_scale_deform_attn op is unavailable ({reason})")
    return function.apply(
        value.contiguous(),
        spatial_shapes.to(torch.long),
        level_start_index.to(torch.long),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        _im2col_step(value.shape[0]),
    )
