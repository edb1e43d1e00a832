"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Each class is an independent binary problem. The focal factor down-weights elements the model already
gets right, so the few positives are not drowned by the many easy negatives (``Q x C`` elements per image,
only ``K`` of them positive). With ``p = sigmoid(x)``, an element costs

- ``alpha * (1 - p)**gamma * -log(p)`` if it is a positive (target 1),
- ``(1 - alpha) * p**gamma * -log(1 - p)`` if it is a negative (target 0).

:func:`focal_terms` returns both, so the Hungarian matcher (whose class cost is *positive minus negative*:
what assigning that class to that query changes in the loss) and the criterion share one formula and one
:class:`FocalParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FocalParams", "focal_terms", "sigmoid_focal_loss"]


@dataclass(frozen=True)
class FocalParams:
    """Focal-loss shape, shared by matching cost and loss.

    Attributes:
        alpha: weight of positives in ``[0, 1]`` (negatives get ``1 - alpha``).
        gamma: focusing exponent ``>= 0`` (0 gives alpha-weighted binary cross-entropy).
    """

    alpha: float = 0.25
    gamma: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"focal alpha must be in [0, 1], got {self.alpha}")
        if self.gamma < 0.0:
            raise ValueError(f"focal gamma must be >= 0, got {self.gamma}")


def focal_terms(logits: Tensor, params: FocalParams) -> tuple[Tensor, Tensor]:
    """Per-element focal loss as if every element were a positive, and as if it were a negative.

    Computed in float32 from ``-log sigmoid(x) = (|x| - x) / 2 + log(1 + exp(-|x|))`` (and the same with
    ``+ x`` for ``-log(1 - sigmoid(x))``): finite for saturated logits, where ``-log(p + eps)`` would not
    be exact, and built from vectorised exp/log, which run faster on CPU than torch's ``softplus``. Writing
    ``max(-x, 0)`` as ``(|x| - x) / 2`` keeps the gradient at ``x = 0`` exact (-1/2, as ``softplus``'s).

    Args:
        logits: any shape, pre-sigmoid scores.
    Returns:
        ``(positive, negative)``, each float32 with the shape of ``logits``.
    """
    logits = logits.float()
    prob = logits.sigmoid()
    magnitude = logits.abs()
    log_term = torch.log(1.0 + torch.exp(-magnitude))
    neg_log_prob = (magnitude - logits) * 0.5 + log_term  # -log p
    neg_log_not_prob = (magnitude + logits) * 0.5 + log_term  # -log(1 - p)
    positive = params.alpha * (1.0 - prob).pow(params.gamma) * neg_log_prob
    negative = (1.0 - params.alpha) * prob.pow(params.gamma) * neg_log_not_prob
    return positive, negative


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, params: FocalParams) -> Tensor:
    """Elementwise sigmoid focal loss (no reduction).

    Args:
        logits: ``(..., C)`` pre-sigmoid scores.
        targets: same shape, 1 (or True) for positives, 0 for negatives.
    Returns:
        float32 loss of the same shape; reduce it as the caller's normalisation requires.

    >>> loss = sigmoid_focal_loss(torch.tensor([[4.0, -4.0]]), torch.tensor([[1, 0]]), FocalParams())
    >>> bool(loss.sum() < 1e-3)
    True
    """
    if targets.shape != logits.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must have the shape of logits {tuple(logits.shape)}")
    positive, negative = focal_terms(logits, params)
    return torch.where(targets.bool(), positive, negative)
