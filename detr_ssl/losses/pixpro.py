"""PixPro's pixel propagation and pixel-to-propagation consistency loss (Xie et al., "Propagate Yourself:
Exploring Pixel-Level Consistency for Unsupervised Visual Representation Learning", CVPR 2021).

Both follow the released code (github.com/zdaxie/PixPro, ``contrast/models/PixPro.py``) number for number:
the propagated values are L2-normalised per location before they are mixed, similarities below
``clamp_value`` are raised to it before the power, and a power below one adds 1e-6 to every similarity
first (so the gradient of ``s ** power`` stays finite at ``s = 0``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["pixel_consistency_loss", "pixel_propagation"]

#: Added to the positive-pair count, so an image whose views share no cell contributes 0, not NaN.
EMPTY_GUARD = 1e-6


def pixel_propagation(features: Tensor, values: Tensor, power: float, clamp_value: float = 0.0) -> Tensor:
    """``y_i = sum_j max(cos(x_i, x_j), clamp_value) ** power * v_j / |v_j|`` over the locations of each map.

    Args:
        features: ``(B, C, h, w)`` maps ``x`` whose cosine similarities weigh the propagation.
        values: ``(B, D, h, w)`` maps ``v`` that are propagated (the value transform of ``x``).
        power: sharpness of the weights (the paper's gamma).
        clamp_value: lower bound of a similarity (0 keeps only positive similarities).

    Returns:
        ``(B, D, h, w)``, not normalised.
    """
    x = F.normalize(features.flatten(2), dim=1)
    v = F.normalize(values.flatten(2), dim=1)
    similarity = (x.transpose(1, 2) @ x).clamp(min=clamp_value)
    if power < 1:
        similarity = similarity + 1e-6
    return (v @ (similarity**power).transpose(1, 2)).view_as(values)


def pixel_consistency_loss(predictions: Tensor, targets: Tensor, positives: Tensor) -> Tensor:
    """``-2`` times the batch mean of each image's average cosine over its positive cell pairs.

    Args:
        predictions: ``(B, D, ha, wa)`` L2-normalised (along D) propagated maps of view a.
        targets: ``(B, D, hb, wb)`` L2-normalised target maps of view b (the caller detaches them).
        positives: ``(B, ha*wa, hb*wb)`` bool, the cell pairs that show the same place (row-major cells).
    """
    cosine = predictions.flatten(2).transpose(1, 2) @ targets.flatten(2)
    mask = positives.to(cosine.dtype)
    per_image = (cosine * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) + EMPTY_GUARD)
    return -2 * per_image.mean()
