"""Hungarian matching for Pair DETR: targets are assigned to (corner query, center query) pairs.

Pair DETR runs two decoders on the shared encoder memory, one locating each object's top-left corner and
one its center (:mod:`detr_ssl.pairs`). Query ``i`` of the corner decoder and query ``i`` of the center
decoder form candidate pair ``i``; the center decoder also classifies. Each target goes to the pair whose
class, two keypoints and resulting box fit it best, with the same weights and focal shape as the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detr_ssl.box_ops import cxcywh_to_xyxy, generalized_box_iou
from detr_ssl.errors import NonFiniteError
from detr_ssl.matcher import HungarianMatcher, MatchIndices, assign_padded, padded_targets
from detr_ssl.pairs import boxes_to_pairs, pairs_to_boxes

__all__ = ["PairHungarianMatcher"]


class PairHungarianMatcher(HungarianMatcher):
    """Optimal one-to-one assignment of targets to candidate keypoint pairs, per image.

    The cost of giving target ``k`` (class ``c_k``, corner ``a_k``, center ``m_k``, box ``b_k``) to pair ``q``
    (corner ``a_q``, center ``m_q``) is::

        cost_class * (focal_pos(q, c_k) - focal_neg(q, c_k))
            + cost_point * (|a_q - a_k|_1 + |m_q - m_k|_1)
            - cost_giou * GIoU(pairs_to_boxes(a_q, m_q), b_k)

    As in :class:`~detr_ssl.matcher.HungarianMatcher`, the costs of all images are one ``(B, Q, K_max)``
    batch (targets padded per image), each image's block assigned by ``scipy.optimize.linear_sum_assignment``.

    Args:
        cost_class, cost_point, cost_giou: weights of the three costs (the loss weights, by default).
        focal_alpha, focal_gamma: focal shape; available as :attr:`focal` so the criterion uses the same.

    >>> matcher = PairHungarianMatcher()
    >>> corners = torch.tensor([[[0.1, 0.1], [0.6, 0.6]]])
    >>> centers = torch.tensor([[[0.2, 0.2], [0.7, 0.7]]])
    >>> target = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}
    >>> matcher(torch.zeros(1, 2, 1), corners, centers, [target])
    [(tensor([1]), tensor([0]))]
    """

    def __init__(self, cost_class: float = 2.0, cost_point: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__(cost_class, cost_point, cost_giou, focal_alpha, focal_gamma)

    @property
    def cost_point(self) -> float:
        """Weight of the two keypoint L1 costs (the box matcher's ``cost_bbox``)."""
        return self.cost_bbox

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, corners: Tensor, centers: Tensor, labels: Tensor,
                    target_boxes: Tensor) -> Tensor:
        """Matching cost of every (pair, target) combination.

        Args:
            logits: ``(N, C)`` pre-sigmoid scores of ``N`` pairs (the center decoder's).
            corners: ``(N, 2)`` predicted top-left corners.
            centers: ``(N, 2)`` predicted centers.
            labels: ``(K,)`` int64 target classes.
            target_boxes: ``(K, 4)`` target cxcywh boxes.
            (Or each with a leading batch dimension ``B``: one cost matrix per batch element.)
        Returns:
            ``(N, K)`` (or ``(B, N, K)``) float32 costs (lower is a better pair).
        """
        corners, centers, target_boxes = corners.float(), centers.float(), target_boxes.float()
        target_corners, target_centers = boxes_to_pairs(target_boxes)
        point_cost = torch.cdist(corners, target_corners, p=1) + torch.cdist(centers, target_centers, p=1)
        boxes = pairs_to_boxes(corners, centers)
        giou_cost = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes))
        return (self.cost_class * self.class_cost(logits, labels) + self.cost_point * point_cost
                + self.cost_giou * giou_cost)

    @torch.no_grad()
    def forward(self, logits: Tensor, corners: Tensor, centers: Tensor,
                targets: list[dict[str, Tensor]]) -> MatchIndices:
        """Matches each image's targets to its candidate pairs.

        Args:
            logits: ``(B, Q, C)`` pre-sigmoid class scores of the center decoder.
            corners: ``(B, Q, 2)`` top-left corners from the corner decoder, in ``[0, 1]``.
            centers: ``(B, Q, 2)`` centers from the center decoder, in ``[0, 1]``.
            targets: ``B`` dicts with ``labels`` int64 ``(K_i,)`` and ``boxes`` ``(K_i, 4)`` cxcywh; ``K_i`` may be 0.
        Returns:
            per image ``(query_idx, target_idx)``, int64 CPU tensors of length ``min(Q, K_i)``, sorted by
            query index (the same :data:`~detr_ssl.matcher.MatchIndices` as the box matcher).
        Raises:
            ValueError: mismatched shapes, or NaN/inf in the predictions.
        """
        batch, num_queries, _ = logits.shape
        if (corners.shape != (batch, num_queries, 2) or centers.shape != (batch, num_queries, 2)
                or len(targets) != batch):
            raise ValueError(f"logits {tuple(logits.shape)}, corners {tuple(corners.shape)}, centers "
                             f"{tuple(centers.shape)} and {len(targets)} targets do not describe the same batch")
        sizes = [len(target["boxes"]) for target in targets]
        if sum(sizes) == 0:
            return assign_padded(logits.new_zeros(batch, num_queries, 0), sizes)
        # Checked on the inputs: a NaN keypoint would otherwise surface as an "invalid box" from the GIoU.
        if not bool(torch.isfinite(logits).all() & torch.isfinite(corners).all() & torch.isfinite(centers).all()):
            raise NonFiniteError("non-finite predictions: the logits or keypoints to match contain NaN or inf")

        labels, target_boxes = padded_targets(targets, corners.float())
        return assign_padded(self.cost_matrix(logits, corners, centers, labels, target_boxes).cpu(), sizes)

