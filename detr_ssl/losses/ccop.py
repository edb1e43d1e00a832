"""CCOP's object-level pieces (Yang et al., "Contrastive Object-level Pre-training with Spatial Noise
Curriculum Learning", arXiv 2111.13651): box jitter on a curriculum, the hardest positive among the
jittered boxes, size-based RoI level assignment (the boxes are pooled by
:func:`detr_ssl.blocks.pooling.multilevel_roi_align`), and the intra-image triplet loss.

The arithmetic follows the released code (github.com/ChenhongyiYang/CCOP, ``openselfsup/models/ccop.py``)
operation for operation, so ``tests/fixtures/ccop_released`` pins it to the released functions: the jitter
draws torch's generator in the released order (per image: centre offsets, then log-size offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.box_ops import box_area, elementwise_box_iou

__all__ = ["JitterSchedule", "assign_levels", "curriculum", "hardest_positive", "intra_image_triplet",
           "jitter_boxes", "jitter_per_image", "jitter_validity", "triplet_negatives"]


class JitterSchedule(NamedTuple):
    """The spatial-noise curriculum at one training step."""

    iou_threshold: float
    """A jittered box is a valid positive when its IoU with the key box is at least this."""
    xy_magnitude: float
    """Centre offsets are uniform in ``[-m/2, m/2)`` box widths / heights."""
    wh_magnitude: float
    """Log width / height offsets are uniform in ``[-m/2, m/2)``."""


def curriculum(progress: float, iou: tuple[float, float], xy: tuple[float, float],
               wh: tuple[float, float]) -> JitterSchedule:
    """Each ``(start, end)`` pair interpolated linearly at ``progress`` (0 at the start of training, 1 at its
    last step), as the released ``iter / total_step``."""
    def at(pair: tuple[float, float]) -> float:
        return pair[0] + progress * (pair[1] - pair[0])

    return JitterSchedule(at(iou), at(xy), at(wh))


def jitter_boxes(boxes: Tensor, num_jitter: int, xy_magnitude: float, wh_magnitude: float,
                 size: tuple[int, int]) -> Tensor:
    """``(N, num_jitter + 1, 4)``: ``num_jitter`` random copies of each ``(N, 4)`` xyxy box, then the box
    itself (the release appends the original, so a positive always exists).

    Each copy moves the centre by ``w * u_x``, ``h * u_y`` and scales the sides by ``exp(v_w)``,
    ``exp(v_h)``, with ``u`` uniform in ``[-xy_magnitude/2, xy_magnitude/2)`` and ``v`` in
    ``[-wh_magnitude/2, wh_magnitude/2)`` (drawn in that order from torch's generator), then is clipped to
    the view of ``size`` (height, width).
    """
    count = len(boxes)
    centre_offsets = (torch.rand(count, num_jitter, 2, device=boxes.device) - 0.5) * xy_magnitude
    log_scales = (torch.rand(count, num_jitter, 2, device=boxes.device) - 0.5) * wh_magnitude
    centres = ((boxes[:, :2] + boxes[:, 2:]) * 0.5).unsqueeze(1)
    sides = (boxes[:, 2:] - boxes[:, :2]).unsqueeze(1)
    new_centres = sides * centre_offsets + centres
    new_sides = torch.exp(log_scales) * sides
    corners = torch.cat((new_centres - 0.5 * new_sides, new_centres + 0.5 * new_sides), dim=-1)
    height, width = size
    limits = boxes.new_tensor([width, height, width, height])
    corners = torch.minimum(corners.clamp(min=0), limits)
    return torch.cat((corners, boxes.unsqueeze(1)), dim=1)


def jitter_per_image(boxes: Tensor, keep: Tensor, num_jitter: int, schedule: JitterSchedule,
                     size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """:func:`jitter_boxes` and :func:`jitter_validity` of every image's kept boxes, image by image (the
    release's order of draws): ``((M, num_jitter + 1, 4) candidates, (M, num_jitter + 1) valid)`` for the
    ``M`` True entries of ``keep`` ``(B, K)``, in row-major order; ``boxes`` is ``(B, K, 4)``."""
    candidates, valid = [], []
    for image_boxes, image_keep in zip(boxes, keep):
        kept = image_boxes[image_keep]
        jittered = jitter_boxes(kept, num_jitter, schedule.xy_magnitude, schedule.wh_magnitude, size)
        candidates.append(jittered)
        valid.append(jitter_validity(kept, jittered, schedule.iou_threshold))
    return torch.cat(candidates), torch.cat(valid)


def jitter_validity(boxes: Tensor, jittered: Tensor, iou_threshold: float) -> Tensor:
    """``(N, J)`` bool: which of the ``(N, J, 4)`` jittered copies overlap their ``(N, 4)`` box with IoU at
    least ``iou_threshold`` (the release marks IoU below the threshold invalid)."""
    return elementwise_box_iou(boxes.unsqueeze(1).expand_as(jittered), jittered) >= iou_threshold


def hardest_positive(query: Tensor, candidates: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The valid candidate least similar to each query: ``((N, D) positives, (N,) their indices)``.

    Args:
        query: ``(N, D)`` L2-normalised query embeddings.
        candidates: ``(N, C, D)`` L2-normalised key embeddings of each query's candidates.
        valid: ``(N, C)`` bool, at least one True per row; ties go to the first index, as ``argmin``.
    """
    with torch.no_grad():
        similarity = (query.unsqueeze(1) * candidates).sum(dim=-1)
        index = similarity.masked_fill(~valid, float("inf")).argmin(dim=1)
    return candidates[torch.arange(len(candidates), device=candidates.device), index], index


def assign_levels(boxes: Tensor, strides: Sequence[int], cells_per_box: float) -> Tensor:
    """``(M,)`` pyramid level of each ``(M, 4)`` xyxy box: the shallowest level whose ``stride *
    cells_per_box`` is at least the box's size ``sqrt(area)``, the deepest level for larger boxes.

    The released rule on FPN P2-P5 (strides 4-32) sends sizes up to 48, 96, 192 px to P2, P3, P4 and larger
    ones to P5: ``cells_per_box`` 12 on those strides (its 224-px bound on P5 only matters for boxes larger
    than the 224-px view, which it sends to P2).
    """
    sizes = torch.sqrt(box_area(boxes))
    bounds = boxes.new_tensor([stride * cells_per_box for stride in strides[:-1]])
    return (sizes.unsqueeze(1) > bounds).sum(dim=1)


def triplet_negatives(key_boxes: Tensor, keep: Tensor, max_iou: float) -> Tensor:
    """``(B, K, K)`` bool: pairs of kept boxes of the same image overlapping with IoU below ``max_iou``.

    Args:
        key_boxes: ``(B, K, 4)`` xyxy boxes in the key view (padded rows are ignored).
        keep: ``(B, K)`` which rows are boxes.
    """
    count = key_boxes.shape[1]
    rows = key_boxes.unsqueeze(2).expand(-1, -1, count, -1)
    iou = elementwise_box_iou(rows, rows.transpose(1, 2))
    return (iou < max_iou) & keep.unsqueeze(2) & keep.unsqueeze(1)


def intra_image_triplet(query: Tensor, key: Tensor, negatives: Tensor, margin: float) -> Tensor:
    """The intra-image triplet loss: mean over the negative pairs ``(i, j)`` of
    ``relu(q_i . k_j - q_j . k_j + margin)``: key box ``j`` must be closer to its own query box than to any
    query box ``i`` of the same image that barely overlaps it. Zero (with a graph) when there is no pair.

    Args:
        query, key: ``(B, K, D)`` L2-normalised embeddings of the same boxes in the two views.
        negatives: ``(B, K, K)`` bool, True at ``(i, j)`` for a negative pair (:func:`triplet_negatives`).
    """
    similarity = query @ key.transpose(1, 2)
    positive = similarity.diagonal(dim1=1, dim2=2).unsqueeze(1)
    violations = F.relu(similarity - positive + margin)[negatives]
    return violations.mean() if len(violations) else similarity.sum() * 0
