"""Typed model outputs: every field documents its shape, instead of string-keyed dicts."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class DetectionOutput:
    """What a detection head predicts for a batch.

    Attributes:
        logits: ``(B, Q, C)`` pre-sigmoid class scores.
        boxes: ``(B, Q, 4)`` boxes as (cx, cy, w, h) in ``[0, 1]``.
        aux: outputs of the earlier decoder layers, first to second-to-last (auxiliary losses).
        encoder: two-stage encoder proposals (class-agnostic logits ``(B, S, C)``), else None.
        hidden_states: ``(L_dec, B, Q, D)`` decoder outputs of every layer, for extra heads.
    """

    logits: Tensor
    boxes: Tensor
    aux: list[DetectionOutput] = field(default_factory=list)
    encoder: DetectionOutput | None = None
    hidden_states: Tensor | None = None


@dataclass
class PairOutput:
    """What Pair DETR predicts: query ``i`` of the corner decoder and query ``i`` of the center decoder
    form candidate pair ``i``.

    Attributes:
        logits: ``(B, Q, C)`` pre-sigmoid class scores (center decoder).
        corners: ``(B, Q, 2)`` top-left keypoints (x, y) in ``[0, 1]``.
        centers: ``(B, Q, 2)`` center keypoints (x, y) in ``[0, 1]``.
        corner_embed, center_embed: ``(B, Q, E)`` keypoint embeddings for the pairing (contrastive) loss.
        aux: the same for the earlier decoder layers, first to second-to-last.
    """

    logits: Tensor
    corners: Tensor
    centers: Tensor
    corner_embed: Tensor
    center_embed: Tensor
    aux: list[PairOutput] = field(default_factory=list)
