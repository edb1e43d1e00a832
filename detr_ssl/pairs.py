"""Boxes as keypoint pairs (Pair DETR): the top-left corner and the center of each box.

Pair DETR predicts a box with two decoders, one locating its top-left corner ``(x0, y0)`` and one its
center ``(cx, cy)``; the box follows from the pair because the center is halfway between opposite corners:
``w = 2 * (cx - x0)`` and ``h = 2 * (cy - y0)``. Coordinates are normalised to ``[0, 1]`` like every box
in the library (docs/ARCHITECTURE.md), and boxes are ``cxcywh``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["boxes_to_pairs", "pairs_to_boxes"]


def boxes_to_pairs(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """``(..., 4)`` cxcywh boxes -> ``(corner, center)``, each ``(..., 2)``: top-left ``(x0, y0)`` and ``(cx, cy)``.

    >>> boxes_to_pairs(torch.tensor([0.5, 0.4, 0.2, 0.6]))
    (tensor([0.4000, 0.1000]), tensor([0.5000, 0.4000]))
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"expected cxcywh boxes of shape (..., 4), got {tuple(boxes.shape)}")
    center, size = boxes[..., :2], boxes[..., 2:]
    return center - size / 2, center


def pairs_to_boxes(corner: Tensor, center: Tensor) -> Tensor:
    """``(corner, center)`` keypoints, each ``(..., 2)`` -> ``(..., 4)`` cxcywh boxes.

    ``w = 2 * (cx - x0)`` and ``h = 2 * (cy - y0)``, clamped at 0: a corner to the right of (or below) its
    center gives a box of zero width (height) at the center rather than a negative one, so the result is
    always a valid box for the overlap functions of :mod:`detr_ssl.box_ops`. Where the clamp is active
    that size gets no gradient; the keypoint losses on the corner itself still pull it back. The box is
    not clipped to the image: a corner near 0 with a center near 1 gives a box reaching 2.

    >>> pairs_to_boxes(torch.tensor([0.4, 0.1]), torch.tensor([0.5, 0.4]))
    tensor([0.5000, 0.4000, 0.2000, 0.6000])
    >>> pairs_to_boxes(torch.tensor([0.6, 0.1]), torch.tensor([0.5, 0.4]))  # corner right of the center
    tensor([0.5000, 0.4000, 0.0000, 0.6000])
    """
    if corner.shape != center.shape or corner.shape[-1] != 2:
        raise ValueError(f"corner {tuple(corner.shape)} and center {tuple(center.shape)} must both be (..., 2)")
    size = (2 * (center - corner)).clamp(min=0)
    return torch.cat((center, size), dim=-1)
