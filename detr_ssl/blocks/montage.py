"""Montages: a batch of images shrunk by ``r`` and tiled ``r x r`` to the original size (MCL's pretext), and
the bookkeeping that finds each sub-image again on a feature map of the montage.

A montage batch keeps the layout of the released MCL code (``MCL.random_combine_img``): sub-image ``j`` of
the flattened layout is montage ``j // r**2``, row ``(j % r**2) // r``, column ``j % r``, and its label is the
index of the batch image it shows. Because every sub-image is ``1/r`` of the side, a feature map of stride
``s`` gives each sub-image a block of ``S / (r * s)`` cells; at stride ``FULL_VIEW_STRIDE / r`` that is the
same ``S / 32`` cells the whole view has at stride 32, which is how MCL pairs scales with pyramid levels
(:func:`scale_levels`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FULL_VIEW_STRIDE", "ScaleLevel", "build_montages", "draw_montage_labels", "montage_position",
           "scale_levels", "tile", "untile"]

FULL_VIEW_STRIDE = 32
"""Stride of the level the full view (scale 1) is read from: C5, the released FPN's top level P5."""


def draw_montage_labels(batch_size: int, ratio: int, device: torch.device | None = None) -> Tensor:
    """``(M * ratio**2,)`` int64: the batch image each sub-image shows, in montage layout order, for
    ``M = ceil(batch_size / ratio**2)`` montages.

    As released: a random permutation of the ``M * ratio**2`` slots taken modulo ``batch_size`` (one
    ``torch.randperm`` on the default generator), so each image appears ``slots // batch_size`` times, the
    lowest-numbered ones once more when the batch does not divide the slots (the release sets ``M`` by hand
    and never has such a remainder)."""
    slots = math.ceil(batch_size / ratio**2) * ratio**2
    return torch.fmod(torch.randperm(slots, device=device), batch_size).long()


def tile(blocks: Tensor, ratio: int) -> Tensor:
    """``(M * ratio**2, C, h, w)`` blocks in layout order -> ``(M, C, ratio * h, ratio * w)`` montages."""
    count, channels, height, width = blocks.shape
    grid = blocks.reshape(count // ratio**2, ratio, ratio, channels, height, width)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(count // ratio**2, channels, ratio * height, ratio * width)


def untile(maps: Tensor, ratio: int) -> Tensor:
    """Inverse of :func:`tile`: ``(M, C, H, W)`` -> the ``(M * ratio**2, C, H / ratio, W / ratio)`` blocks of
    the sub-images, in layout order (their cells, for a feature map of the montages)."""
    count, channels, height, width = maps.shape
    if height % ratio or width % ratio:
        raise ValueError(f"a {height}x{width} map does not split into {ratio}x{ratio} equal blocks")
    grid = maps.reshape(count, channels, ratio, height // ratio, ratio, width // ratio)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(count * ratio**2, channels, height // ratio, width // ratio)


def build_montages(images: Tensor, labels: Tensor, ratio: int) -> Tensor:
    """``(M, C, S, S)`` montages of ``images`` ``(B, C, S, S)``: each image shrunk by ``ratio`` (nearest, as
    released: pixel ``(ratio * i, ratio * j)`` of the image), sub-image ``j`` showing ``images[labels[j]]``."""
    small = F.interpolate(images, scale_factor=1 / ratio)
    return tile(small[labels], ratio)


def montage_position(index: int, ratio: int) -> tuple[int, int, int]:
    """(montage, row, column) of sub-image ``index`` of the layout."""
    montage, cell = divmod(index, ratio**2)
    return montage, cell // ratio, cell % ratio


class ScaleLevel(NamedTuple):
    """One montage scale and the pyramid level it is read from."""

    ratio: int
    """Downsampling ratio r: montages of r x r sub-images (1: the full view)."""
    level: int
    """Index of its level in the pyramid (shallowest first), the one of stride ``FULL_VIEW_STRIDE / r``."""
    weight: float
    """Its weight in the loss."""


def scale_levels(ratios: Sequence[int], weights: Sequence[float], strides: Sequence[int]) -> list[ScaleLevel]:
    """Scale ``r`` reads the level of stride ``FULL_VIEW_STRIDE / r`` (1 -> 32, 2 -> 16, 4 -> 8, 8 -> 4: the
    released pairing of scales 1, 2, 4, 8 with FPN levels P5, P4, P3, P2), so each sub-image covers the same
    cells as the full view does at stride 32. ``strides``: the pyramid's, shallowest first.

    Raises ValueError for a ratio that does not divide ``FULL_VIEW_STRIDE`` or whose stride the pyramid lacks.
    """
    if len(ratios) != len(weights):
        raise ValueError(f"{len(ratios)} scales but {len(weights)} weights")
    scales = []
    for ratio, weight in zip(ratios, weights):
        stride = FULL_VIEW_STRIDE // ratio if ratio > 0 and FULL_VIEW_STRIDE % ratio == 0 else None
        if stride not in strides:
            raise ValueError(f"scale {ratio} reads stride {FULL_VIEW_STRIDE}/{ratio}, which the pyramid (strides "
                             f"{', '.join(map(str, strides))}) does not have")
        scales.append(ScaleLevel(ratio, list(strides).index(stride), weight))
    return scales
