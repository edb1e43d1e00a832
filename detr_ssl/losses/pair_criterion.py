"""The Pair DETR set loss: pair matching, then focal classification, keypoint L1, pair-box GIoU and InfoNCE.

Pair DETR (:mod:`detr_ssl.losses.pair_contrastive`) predicts every object as a pair of keypoints: query
``i`` of a corner decoder gives a top-left corner and an embedding, query ``i`` of a center decoder gives a
center, an embedding and the class scores. Each layer is matched on its own
(:class:`~detr_ssl.pair_matcher.PairHungarianMatcher`) and scored with:

- ``loss_cls``: sigmoid focal loss of the center decoder's logits (as in
  :class:`~detr_ssl.losses.set_criterion.SetCriterion`);
- ``loss_corner`` / ``loss_center``: L1 between matched keypoints and the target's corner / center;
- ``loss_giou``: ``1 - GIoU`` between the box the pair spans (:func:`~detr_ssl.pairs.pairs_to_boxes`) and
  the target box;
- ``loss_pair``: InfoNCE between the corner and center embeddings of the matched pairs of the whole batch.

The first four are sums over the batch divided by the number of target boxes (averaged over processes,
:func:`~detr_ssl.losses.set_criterion.count_boxes`); ``loss_pair`` is already a mean over matched pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from detr_ssl.box_ops import cxcywh_to_xyxy, elementwise_generalized_box_iou
from detr_ssl.losses.focal import sigmoid_focal_loss
from detr_ssl.losses.pair_contrastive import pair_infonce
from detr_ssl.losses.output import LossOutput
from detr_ssl.losses.set_criterion import count_boxes
from detr_ssl.matcher import MatchIndices
from detr_ssl.models.outputs import PairOutput
from detr_ssl.pair_matcher import PairHungarianMatcher
from detr_ssl.pairs import boxes_to_pairs, pairs_to_boxes

if TYPE_CHECKING:
    from detr_ssl.config import LossConfig

__all__ = ["PairLossWeights", "PairSetCriterion", "build_pair_criterion"]

Targets = list[dict[str, Tensor]]


@dataclass(frozen=True)
class PairLossWeights:
    """Weights of the loss terms; ``point`` weighs both keypoint L1 terms (as one box L1 weight would)."""

    cls: float = 2.0
    point: float = 5.0
    giou: float = 2.0
    pair: float = 1.0


class PairSetCriterion(nn.Module):
    """Set loss of a :class:`~detr_ssl.models.outputs.PairOutput` against per-image targets.

    Args:
        num_classes: ``C``; every layer's logits must have ``C`` columns.
        matcher: pairs candidate keypoint pairs with targets; its :attr:`~PairHungarianMatcher.focal`
            parameters are also the focal loss's. Default: a matcher whose costs are ``weights``.
        weights: loss-term weights.
        aux_loss: also score the ``aux`` layers (terms suffixed ``_0``, ``_1``, ...).
        temperature: InfoNCE temperature of ``loss_pair``.
        gather_across_processes: use the matched pairs of every process as InfoNCE negatives
            (see :func:`~detr_ssl.losses.pair_contrastive.pair_infonce`).

    >>> criterion = PairSetCriterion(num_classes=1)
    >>> output = PairOutput(logits=torch.zeros(1, 3, 1), corners=torch.full((1, 3, 2), 0.4),
    ...                     centers=torch.full((1, 3, 2), 0.5), corner_embed=torch.randn(1, 3, 8),
    ...                     center_embed=torch.randn(1, 3, 8))
    >>> targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    >>> sorted(criterion(output, targets).terms)
    ['loss_center', 'loss_cls', 'loss_corner', 'loss_giou', 'loss_pair']
    """

    def __init__(self, num_classes: int, matcher: PairHungarianMatcher | None = None,
                 weights: PairLossWeights = PairLossWeights(), aux_loss: bool = True, temperature: float = 0.1,
                 gather_across_processes: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.num_classes = num_classes
        self.matcher = matcher or PairHungarianMatcher(weights.cls, weights.point, weights.giou)
        self.weights = weights
        self.aux_loss = aux_loss
        self.temperature = temperature
        self.gather_across_processes = gather_across_processes

    def forward(self, output: PairOutput, targets: Targets) -> LossOutput:
        """Matches and scores every layer of ``output``.

        Args:
            output: final layer plus optional ``aux`` layers.
            targets: ``B`` dicts with ``labels`` int64 ``(K_i,)`` and ``boxes`` ``(K_i, 4)`` cxcywh.
        Returns:
            total, unweighted detached terms per layer, and the matchings (``layer_indices`` keyed by suffix).
        """
        num_boxes = count_boxes(targets, output.logits.device)
        layers = [("", output)] + ([(f"_{i}", aux) for i, aux in enumerate(output.aux)] if self.aux_loss else [])
        weights = {"loss_cls": self.weights.cls, "loss_corner": self.weights.point, "loss_center": self.weights.point,
                   "loss_giou": self.weights.giou, "loss_pair": self.weights.pair}

        total = output.logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        layer_indices: dict[str, MatchIndices] = {}
        for suffix, layer in layers:
            self._check(layer)
            indices = layer_indices[suffix] = self.matcher(layer.logits, layer.corners, layer.centers, targets)
            for name, loss in self.layer_losses(layer, targets, indices, num_boxes).items():
                total = total + weights[name] * loss
                terms[f"{name}{suffix}"] = loss.detach()
        return LossOutput(total=total, terms=terms, indices=layer_indices[""], layer_indices=layer_indices,
                          num_boxes=num_boxes)

    def layer_losses(self, layer: PairOutput, targets: Targets, indices: MatchIndices,
                     num_boxes: float) -> dict[str, Tensor]:
        """Unweighted losses of one layer for a given matching, keyed ``loss_cls``, ``loss_corner``,
        ``loss_center``, ``loss_giou``, ``loss_pair``."""
        device = layer.logits.device
        batch_idx = torch.cat([torch.full_like(query, image) for image, (query, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([query for query, _ in indices]).to(device)
        matched_labels = torch.cat([t["labels"][target] for t, (_, target) in zip(targets, indices)]).to(device)
        matched_boxes = torch.cat([t["boxes"][target] for t, (_, target) in zip(targets, indices)])

        one_hot = torch.zeros(layer.logits.shape, dtype=torch.bool, device=device)
        one_hot[batch_idx, query_idx, matched_labels] = True
        loss_cls = sigmoid_focal_loss(layer.logits, one_hot, self.matcher.focal).sum() / num_boxes

        corners = layer.corners[batch_idx, query_idx].float()
        centers = layer.centers[batch_idx, query_idx].float()
        matched_boxes = matched_boxes.to(corners)
        target_corners, target_centers = boxes_to_pairs(matched_boxes)
        giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(pairs_to_boxes(corners, centers)),
                                               cxcywh_to_xyxy(matched_boxes))
        loss_pair = pair_infonce(layer.corner_embed[batch_idx, query_idx], layer.center_embed[batch_idx, query_idx],
                                 self.temperature, gather_across_processes=self.gather_across_processes)
        return {"loss_cls": loss_cls,
                "loss_corner": (corners - target_corners).abs().sum() / num_boxes,
                "loss_center": (centers - target_centers).abs().sum() / num_boxes,
                "loss_giou": (1.0 - giou).sum() / num_boxes,
                "loss_pair": loss_pair}

    def _check(self, layer: PairOutput) -> None:
        if layer.logits.shape[-1] != self.num_classes:
            raise ValueError(f"the model predicts {layer.logits.shape[-1]} classes, "
                             f"the criterion expects {self.num_classes}")
        queries = layer.logits.shape[:2]
        if layer.corner_embed.shape[:2] != queries or layer.corner_embed.shape != layer.center_embed.shape:
            raise ValueError(f"corner_embed {tuple(layer.corner_embed.shape)} and center_embed "
                             f"{tuple(layer.center_embed.shape)} must both be (B, Q, E), (B, Q) = {tuple(queries)}")


def build_pair_criterion(num_classes: int, loss: LossConfig, temperature: float = 0.1,
                         pair_weight: float = 1.0) -> PairSetCriterion:
    """The Pair DETR criterion for a run's :class:`~detr_ssl.config.LossConfig`: its box L1 weight weighs the
    keypoint L1 terms, and matching costs and loss terms share one set of weights and focal parameters."""
    matcher = PairHungarianMatcher(cost_class=loss.cls_weight, cost_point=loss.bbox_weight,
                                   cost_giou=loss.giou_weight, focal_alpha=loss.focal_alpha,
                                   focal_gamma=loss.focal_gamma)
    weights = PairLossWeights(cls=loss.cls_weight, point=loss.bbox_weight, giou=loss.giou_weight, pair=pair_weight)
    return PairSetCriterion(num_classes, matcher, weights, aux_loss=loss.aux_loss, temperature=temperature)
