"""The one result type of every loss the engine back-propagates."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

#: Per image: (query indices, target indices), int64 on the CPU, equal lengths, sorted by query index.
MatchIndices = list[tuple[Tensor, Tensor]]


@dataclass
class LossOutput:
    """What every loss returns to the engine: the scalar to back-propagate and named terms to log; set
    losses also return their matching.

    Attributes:
        total: scalar to back-propagate: the weighted sum of every term.
        terms: detached terms for logging. The set criterion's are *unweighted*: ``loss_cls``,
            ``loss_bbox``, ``loss_giou`` for the final layer, the same suffixed ``_0``, ``_1``, ... per
            auxiliary layer and ``_enc`` for the encoder proposals.
        indices: the final layer's matching (per image ``(query_idx, target_idx)``), for tasks that put
            extra losses on the matched queries (e.g. DetReg's embedding loss).
        layer_indices: every scored layer's matching, keyed by its term suffix (``""`` final, ``"_0"``...
            auxiliary, ``"_enc"`` encoder), for extra losses on auxiliary layers (UP-DETR).
        num_boxes: the normaliser the terms were divided by (``set_criterion.count_boxes``).
    """

    total: Tensor
    terms: dict[str, Tensor]
    indices: MatchIndices = field(default_factory=list)
    layer_indices: dict[str, MatchIndices] = field(default_factory=dict)
    num_boxes: float = 1.0
