"""SCFS's semantics-consistent feature search (Song et al., ICCV 2023; skyoux/scfs, ``models/scfs.py``).

A local crop shows only part of the image, and the global view it is compared with shows more. Instead
of pulling the two together as wholes, SCFS searches the teacher's feature map of a global view for what
the local crop shows: the student's feature map of the crop is average-pooled into a query, its cosine with
the teacher's feature at every location of the global view is the attention, and the global map weighted
by that attention is the searched feature, which the teacher's per-layer head turns into the local crop's
target. As released, the attention is the plain cosine (in [-1, 1], not normalised to sum to one): it is
1 exactly where the teacher feature points the same way as the query, and the head sees a map whose
locations are scaled by how well they match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.losses.dino import soft_cross_entropy

__all__ = ["local_search_loss", "search", "search_attention"]


def search_attention(local_features: Tensor, global_features: Tensor) -> Tensor:
    """``(N, 1, H, W)`` cosine between each local crop's average-pooled feature and the global view's
    feature at every location.

    Args:
        local_features: ``(N, C, h, w)`` feature maps of the local crops (the student's).
        global_features: ``(N, C, H, W)`` the global view of the same image, row for row (the teacher's).
    """
    query = F.normalize(local_features.mean(dim=(2, 3), keepdim=True), dim=1)
    return torch.sum(F.normalize(global_features, dim=1) * query, dim=1, keepdim=True)


def search(local_features: Tensor, global_features: Tensor) -> tuple[Tensor, Tensor]:
    """The searched features of every local crop in the global view of its image.

    Args:
        local_features: ``(L * B, C, h, w)``: ``L`` local crops of ``B`` images, crop-major (crop 0 of every
            image, then crop 1, ...), as a batch of crops concatenated view by view.
        global_features: ``(B, C, H, W)`` one global view of each image.

    Returns:
        ``(attention, searched)``: ``(L * B, 1, H, W)`` the :func:`search_attention` of each crop and
        ``(L * B, C, H, W)`` its image's global map scaled by it.
    """
    crops, remainder = divmod(len(local_features), len(global_features))
    if remainder or crops == 0:
        raise ValueError(f"{len(local_features)} local crops are not a whole number of batches of "
                         f"{len(global_features)} global views")
    tiled = global_features.repeat(crops, 1, 1, 1)
    attention = search_attention(local_features, tiled)
    return attention, attention * tiled


def local_search_loss(student_logits: Sequence[Tensor], target_logits: Sequence[Tensor], teacher_temperature: float,
                      student_temperature: float) -> Tensor:
    """Mean over local crops of the cross-entropy from ``softmax(target / teacher_temperature)`` (the
    searched feature's head output, sharpened but, as released, not centred) to the student's output for the
    same crop; per crop, ``(B, D)`` student and target rows correspond."""
    losses = [soft_cross_entropy(F.softmax(target / teacher_temperature, dim=-1).detach(), student, student_temperature)
              for student, target in zip(student_logits, target_logits, strict=True)]
    return sum(losses) / len(losses)
