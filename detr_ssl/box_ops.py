"""Pure box functions: format conversions, areas, IoU and generalized IoU.

Three formats appear in the library (docs/ARCHITECTURE.md):

- ``cxcywh``: ``(cx, cy, w, h)``, what the model predicts and targets hold (normalised to ``[0, 1]``);
- ``xyxy``: ``(x0, y0, x1, y1)``, what overlap computations need;
- ``xywh``: ``(x, y, w, h)`` with ``(x, y)`` the top-left corner, the COCO JSON / pycocotools format.

Every function takes boxes in the last dimension (``(..., 4)``) unless stated otherwise and works in
whatever units it is given (normalised or pixels), as long as both arguments share them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "AREA_EPS",
    "box_area",
    "box_iou",
    "check_xyxy",
    "cxcywh_to_xyxy",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]

#: Floor for union and enclosing areas, so degenerate (zero-area) boxes give finite values instead of NaN.
AREA_EPS = 1e-7


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre/size boxes -> corner boxes.

    >>> cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4]))
    tensor([0.4000, 0.3000, 0.6000, 0.7000])
    """
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corner boxes -> centre/size boxes."""
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corner boxes -> COCO ``(x, y, w, h)`` boxes.

    >>> xyxy_to_xywh(torch.tensor([10.0, 20.0, 40.0, 30.0]))
    tensor([10., 20., 30., 10.])
    """
    top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
    return torch.cat((top_left, bottom_right - top_left), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` COCO ``(x, y, w, h)`` boxes -> corner boxes."""
    top_left, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((top_left, top_left + size), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy boxes -> ``(...)`` areas (negative for inverted boxes; see :func:`check_xyxy`)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def check_xyxy(boxes: Tensor, name: str = "boxes") -> None:
    """Raises ``ValueError`` unless every box has ``x1 >= x0`` and ``y1 >= y0`` (so no NaN either).

    Overlap formulas silently return garbage for inverted boxes; a model emitting NaN boxes ends up here
    too, so the message says which.
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape (..., 4), got {tuple(boxes.shape)}")
    valid = (boxes[..., 2:] >= boxes[..., :2]).all()
    if not bool(valid):
        reason = "contain NaN" if bool(torch.isnan(boxes).any()) else "have x1 < x0 or y1 < y0"
        raise ValueError(f"{name}: boxes are not valid xyxy boxes: they {reason}")


def _check_pairs(boxes1: Tensor, boxes2: Tensor) -> None:
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"matched boxes need equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    check_xyxy(boxes1, "boxes1")
    check_xyxy(boxes2, "boxes2")


def _overlap(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and smallest-enclosing-box areas of two broadcastable ``(..., 4)`` xyxy sets.

    One implementation serves the pairwise (``boxes1[:, None]`` against ``boxes2[None]``) and the
    elementwise (matched pairs) variants, so they cannot drift apart. Coordinates are taken apart first:
    broadcasting ``(N, 1)`` against ``(1, M)`` runs vectorised, broadcasting ``(N, 1, 2)`` against
    ``(1, M, 2)`` runs an inner loop of length 2, many times slower on CPU. The enclosing extent needs no
    second min/max: ``max(a1, b1) - min(a0, b0) = (a1 - a0) + (b1 - b0) - (min(a1, b1) - max(a0, b0))``.
    """
    x0a, y0a, x1a, y1a = boxes1.unbind(-1)
    x0b, y0b, x1b, y1b = boxes2.unbind(-1)
    width_a, height_a, width_b, height_b = x1a - x0a, y1a - y0a, x1b - x0b, y1b - y0b
    overlap_w = torch.minimum(x1a, x1b) - torch.maximum(x0a, x0b)  # negative when disjoint
    overlap_h = torch.minimum(y1a, y1b) - torch.maximum(y0a, y0b)
    intersection = overlap_w.clamp(min=0) * overlap_h.clamp(min=0)
    union = (width_a * height_a + width_b * height_b) - intersection
    enclosing = (width_a + width_b - overlap_w) * (height_a + height_b - overlap_h)
    return intersection, union.clamp(min=AREA_EPS), enclosing.clamp(min=AREA_EPS)


def _giou(intersection: Tensor, union: Tensor, enclosing: Tensor) -> Tensor:
    # GIoU = IoU - (area of the enclosing box not covered by the union) / enclosing area.
    return intersection / union - (enclosing - union) / enclosing


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes: ``(N, 4)``, ``(M, 4)`` -> ``(N, M)``."""
    check_xyxy(boxes1, "boxes1")
    check_xyxy(boxes2, "boxes2")
    intersection, union, _ = _overlap(boxes1[:, None], boxes2[None])
    return intersection / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., CVPR 2019) of xyxy boxes: ``(N, 4)``, ``(M, 4)`` -> ``(N, M)``,
    or per batch element: ``(B, N, 4)``, ``(B, M, 4)`` -> ``(B, N, M)``.

    In ``[-1, 1]``: 1 for identical boxes, below 0 for disjoint ones (the further apart, the lower),
    which gives a useful gradient where plain IoU is flat at 0.

    >>> generalized_box_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]]))
    tensor([[-0.3333]])
    """
    check_xyxy(boxes1, "boxes1")
    check_xyxy(boxes2, "boxes2")
    return _giou(*_overlap(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3)))


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of matched pairs of xyxy boxes: ``(N, 4)``, ``(N, 4)`` -> ``(N,)``."""
    _check_pairs(boxes1, boxes2)
    intersection, union, _ = _overlap(boxes1, boxes2)
    return intersection / union


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of matched pairs of xyxy boxes: ``(N, 4)``, ``(N, 4)`` -> ``(N,)``.

    What the loss needs: computing the full pairwise matrix and keeping its diagonal costs ``N`` times more.
    """
    _check_pairs(boxes1, boxes2)
    return _giou(*_overlap(boxes1, boxes2))
