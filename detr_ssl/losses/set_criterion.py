"""The Deformable DETR set loss: Hungarian matching, then focal classification + L1 + GIoU box losses.

Each output layer is matched to the targets on its own (as in DETR): the final layer, every auxiliary
decoder layer (``aux``, keys suffixed ``_0``, ``_1``, ...) and the two-stage encoder proposals
(``encoder``, suffix ``_enc``, class-agnostic: every target counts as class 0 there).

All terms are normalised by the number of target boxes in the *whole* batch, summed over processes and
divided by the world size, so every process uses the same normaliser and the gradient does not depend on
how images are spread over processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from detr_ssl.box_ops import cxcywh_to_xyxy, elementwise_generalized_box_iou
from detr_ssl.distributed import all_reduce_sum, world_size
from detr_ssl.losses.focal import sigmoid_focal_loss
from detr_ssl.losses.output import LossOutput
from detr_ssl.matcher import HungarianMatcher, MatchIndices
from detr_ssl.models.outputs import DetectionOutput

if TYPE_CHECKING:
    from detr_ssl.config import LossConfig

__all__ = ["LossWeights", "SetCriterion", "build_criterion", "count_boxes"]

Targets = list[dict[str, Tensor]]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three loss terms (Deformable DETR: cls 2, L1 5, GIoU 2)."""

    cls: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0


def count_boxes(targets: Targets, device: torch.device) -> float:
    """The box-loss normaliser: targets in the batch, averaged over processes, at least 1.

    Averaging the all-reduced sum (rather than using the local count) keeps the loss scale identical on
    every process; the floor of 1 keeps batches without any box finite.
    """
    local = torch.tensor(float(sum(len(target["boxes"]) for target in targets)), device=device)
    return max(float(all_reduce_sum(local)) / world_size(), 1.0)


class SetCriterion(nn.Module):
    """Set loss of a :class:`~detr_ssl.models.outputs.DetectionOutput` against per-image targets.

    Args:
        num_classes: ``C``; the final and auxiliary logits must have ``C`` columns.
        matcher: pairs queries with targets; its :attr:`~HungarianMatcher.focal` parameters are also the
            focal loss's, so matching cost and loss cannot disagree. Default: a matcher whose costs are
            ``weights``.
        weights: loss-term weights.
        aux_loss: also score ``aux`` layers and ``encoder`` proposals when the output has them.
        no_object_weight: factor on the classification loss of unmatched ("no object") queries; UP-DETR
            uses 0.1 so that the few matched queries are not drowned by the many empty ones.

    >>> criterion = SetCriterion(num_classes=3)
    >>> output = DetectionOutput(logits=torch.zeros(1, 5, 3), boxes=torch.full((1, 5, 4), 0.5))
    >>> targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    >>> sorted(criterion(output, targets).terms)
    ['loss_bbox', 'loss_cls', 'loss_giou']
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None,
                 weights: LossWeights = LossWeights(), aux_loss: bool = True, no_object_weight: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(weights.cls, weights.bbox, weights.giou)
        self.weights = weights
        self.aux_loss = aux_loss
        self.no_object_weight = no_object_weight

    def forward(self, output: DetectionOutput, targets: Targets) -> LossOutput:
        """Matches and scores every layer of ``output``.

        Args:
            output: final layer ``logits (B, Q, C)``, ``boxes (B, Q, 4)``, plus optional ``aux`` / ``encoder``.
            targets: ``B`` dicts with ``labels`` int64 ``(K_i,)`` and ``boxes`` ``(K_i, 4)`` cxcywh.
        """
        if output.logits.shape[-1] != self.num_classes:
            raise ValueError(f"the model predicts {output.logits.shape[-1]} classes, "
                             f"the criterion expects {self.num_classes}")
        num_boxes = count_boxes(targets, output.logits.device)
        layers: list[tuple[str, DetectionOutput, Targets]] = [("", output, targets)]
        if self.aux_loss:
            layers += [(f"_{i}", aux, targets) for i, aux in enumerate(output.aux)]
            if output.encoder is not None:
                agnostic = [{**target, "labels": torch.zeros_like(target["labels"])} for target in targets]
                layers.append(("_enc", output.encoder, agnostic))

        total = output.logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        layer_indices: dict[str, MatchIndices] = {}
        for suffix, layer, layer_targets in layers:
            indices = layer_indices[suffix] = self.matcher(layer.logits, layer.boxes, layer_targets)
            cls, bbox, giou = self.layer_losses(layer, layer_targets, indices, num_boxes)
            total = total + self.weights.cls * cls + self.weights.bbox * bbox + self.weights.giou * giou
            terms.update({f"loss_cls{suffix}": cls.detach(), f"loss_bbox{suffix}": bbox.detach(),
                          f"loss_giou{suffix}": giou.detach()})
        return LossOutput(total=total, terms=terms, indices=layer_indices[""], layer_indices=layer_indices,
                          num_boxes=num_boxes)

    def layer_losses(self, layer: DetectionOutput, targets: Targets, indices: MatchIndices,
                     num_boxes: float) -> tuple[Tensor, Tensor, Tensor]:
        """Unweighted (focal class, L1, GIoU) losses of one layer for a given matching.

        Class: focal loss summed over all ``B x Q x C`` elements (one-hot targets on matched queries,
        all-zero rows for the rest) / ``num_boxes``. Boxes: summed over matched pairs / ``num_boxes``.
        """
        logits, boxes = layer.logits, layer.boxes
        batch_idx = torch.cat([torch.full_like(query, image) for image, (query, _) in enumerate(indices)])
        query_idx = torch.cat([query for query, _ in indices])
        matched_labels = torch.cat([t["labels"][target] for t, (_, target) in zip(targets, indices)])
        matched_targets = torch.cat([t["boxes"][target] for t, (_, target) in zip(targets, indices)])
        batch_idx, query_idx = batch_idx.to(logits.device), query_idx.to(logits.device)

        one_hot = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        one_hot[batch_idx, query_idx, matched_labels.to(logits.device)] = True
        class_loss = sigmoid_focal_loss(logits, one_hot, self.matcher.focal)
        if self.no_object_weight != 1.0:
            row_weight = torch.full(logits.shape[:2], self.no_object_weight, device=logits.device)
            row_weight[batch_idx, query_idx] = 1.0
            class_loss = class_loss * row_weight[..., None]
        loss_cls = class_loss.sum() / num_boxes

        matched_boxes = boxes[batch_idx, query_idx].float()
        matched_targets = matched_targets.to(matched_boxes)
        loss_bbox = (matched_boxes - matched_targets).abs().sum() / num_boxes
        giou = elementwise_generalized_box_iou(cxcywh_to_xyxy(matched_boxes), cxcywh_to_xyxy(matched_targets))
        loss_giou = (1.0 - giou).sum() / num_boxes
        return loss_cls, loss_bbox, loss_giou


def build_criterion(num_classes: int, loss: LossConfig, no_object_weight: float = 1.0) -> SetCriterion:
    """The criterion for a run's :class:`~detr_ssl.config.LossConfig`: one set of weights for matching
    costs and loss terms, one set of focal parameters for both."""
    matcher = HungarianMatcher(cost_class=loss.cls_weight, cost_bbox=loss.bbox_weight, cost_giou=loss.giou_weight,
                               focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma)
    weights = LossWeights(cls=loss.cls_weight, bbox=loss.bbox_weight, giou=loss.giou_weight)
    return SetCriterion(num_classes, matcher, weights, aux_loss=loss.aux_loss, no_object_weight=no_object_weight)
