"""Hungarian matching between a detector's queries and the ground-truth boxes of each image.

DETR-style detectors predict a *set*: each target box is assigned to exactly one query by minimising a
matching cost, and the loss is then computed on those pairs (every other query should predict "nothing").
The cost is the same weighted sum the loss uses (focal class cost, L1 and GIoU box costs), so matching
picks the pairs that would give the smallest loss.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from detr_ssl.box_ops import cxcywh_to_xyxy, generalized_box_iou
from detr_ssl.errors import NonFiniteError
from detr_ssl.losses.focal import FocalParams, focal_terms
from detr_ssl.losses.output import MatchIndices

__all__ = ["HungarianMatcher", "MatchIndices"]


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of targets to queries, per image.

    The cost of giving target ``k`` (class ``c_k``, box ``b_k``) to query ``q`` is::

        cost_class * (focal_pos(q, c_k) - focal_neg(q, c_k)) + cost_bbox * |box_q - b_k|_1
            - cost_giou * GIoU(box_q, b_k)

    The costs of all images are built at once as a ``(B, Q, K_max)`` batch (each image's targets padded to
    the batch's largest count; one gather, one ``cdist``, one GIoU), then each image's ``(Q, K_i)`` block
    goes to ``scipy.optimize.linear_sum_assignment``.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three costs (the loss weights, by default).
        focal_alpha, focal_gamma: focal shape; available as :attr:`focal` so the criterion uses the same.

    >>> matcher = HungarianMatcher()
    >>> logits, boxes = torch.zeros(1, 3, 2), torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2],
    ...                                                      [0.5, 0.5, 0.9, 0.9]]])
    >>> matcher(logits, boxes, [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}])
    [(tensor([1]), tensor([0]))]
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        if any(value < 0 for value in costs.values()) or not any(costs.values()):
            raise ValueError(f"matching costs must be >= 0 and not all 0, got {costs}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal = FocalParams(focal_alpha, focal_gamma)

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
                f"focal={self.focal}")

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor) -> Tensor:
        """Matching cost of every (query, target) pair.

        Args:
            logits: ``(N, C)`` pre-sigmoid scores of ``N`` queries.
            boxes: ``(N, 4)`` predicted cxcywh boxes.
            labels: ``(K,)`` int64 target classes.
            target_boxes: ``(K, 4)`` target cxcywh boxes.
            (Or each with a leading batch dimension ``B``: one cost matrix per batch element.)
        Returns:
            ``(N, K)`` (or ``(B, N, K)``) float32 costs (lower is a better pair).
        """
        boxes, target_boxes = boxes.float(), target_boxes.float()
        l1_cost = torch.cdist(boxes, target_boxes, p=1)
        giou_cost = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes))
        return (self.cost_class * self.class_cost(logits, labels) + self.cost_bbox * l1_cost
                + self.cost_giou * giou_cost)

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Unweighted focal class cost ``focal_pos(q, c_k) - focal_neg(q, c_k)`` of every (query, target) pair:
        what giving target ``k``'s class to query ``q`` changes in the loss.

        ``logits`` ``(..., N, C)`` pre-sigmoid scores, ``labels`` ``(..., K)`` int64 -> ``(..., N, K)`` float32.
        """
        positive, negative = focal_terms(class_logits(logits, labels), self.focal)
        return positive - negative

    @torch.no_grad()
    def forward(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> MatchIndices:
        """Matches each image's targets to its queries.

        Args:
            logits: ``(B, Q, C)`` pre-sigmoid class scores.
            boxes: ``(B, Q, 4)`` predicted cxcywh boxes in ``[0, 1]``.
            targets: ``B`` dicts with ``labels`` int64 ``(K_i,)`` and ``boxes`` ``(K_i, 4)`` cxcywh; ``K_i`` may be 0.
        Returns:
            per image ``(query_idx, target_idx)``, int64 CPU tensors of length ``min(Q, K_i)``, sorted by
            query index (``target_idx[j]`` is the target matched to query ``query_idx[j]``).
        Raises:
            ValueError: mismatched shapes, invalid boxes, or a non-finite cost (NaN/inf predictions).
        """
        logits, boxes = logits.float(), boxes.float()  # autocast outputs: costs (and padded targets) in float32
        batch, num_queries, _ = logits.shape
        if boxes.shape[:2] != (batch, num_queries) or len(targets) != batch:
            raise ValueError(f"logits {tuple(logits.shape)}, boxes {tuple(boxes.shape)} and {len(targets)} "
                             "targets do not describe the same batch")
        sizes = [len(target["boxes"]) for target in targets]
        if sum(sizes) == 0:
            return assign_padded(logits.new_zeros(batch, num_queries, 0), sizes)
        labels, target_boxes = padded_targets(targets, boxes)
        return assign_padded(self.cost_matrix(logits, boxes, labels, target_boxes).cpu(), sizes)


def class_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Each query's logit for each target's class: ``(..., N, C)``, ``(..., K)`` -> ``(..., N, K)``."""
    return logits.gather(-1, labels.unsqueeze(-2).expand(*logits.shape[:-1], labels.shape[-1]))


def padded_targets(targets: list[dict[str, Tensor]], like: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's labels ``(B, K_max)`` and cxcywh boxes ``(B, K_max, 4)`` (dtype and device of ``like``),
    padded to the batch's largest count.

    One ``(B, Q, K_max)`` cost then holds every image's own matrix, and no query is costed against another
    image's targets (B times less work than costing the concatenated targets). The padding is a valid box
    and class 0, so its costs are finite; :func:`assign_padded` slices it away.
    """
    labels = pad_sequence([target["labels"] for target in targets], batch_first=True)
    boxes = pad_sequence([target["boxes"].to(like) for target in targets], batch_first=True, padding_value=0.5)
    return labels.to(like.device), boxes


def assign_padded(cost: Tensor, sizes: list[int]) -> MatchIndices:
    """Per-image optimal assignment from padded CPU costs ``(B, Q, K_max)``: image ``i`` uses ``[:, :sizes[i]]``.

    Returns per image (query indices, target indices), int64, sorted by query; empty when ``K_i == 0``.
    Raises NonFiniteError on NaN or -inf costs (scipy rejects them, so checking up front costs nothing).
    """
    matches = []
    for image, size in enumerate(sizes):
        if size == 0:
            matches.append((torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)))
            continue
        try:
            query_idx, target_idx = linear_sum_assignment(cost[image, :, :size].numpy())
        except ValueError as exc:
            raise NonFiniteError("non-finite matching cost: the predicted logits or boxes contain NaN or inf") from exc
        matches.append((torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64)))
    return matches
