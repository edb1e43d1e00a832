"""Losses: the sigmoid focal loss and the Deformable DETR set criterion.

``detr_ssl.matcher`` needs the focal terms from here and the criterion needs the matcher, so the
criterion's names are re-exported lazily (PEP 562): importing the matcher first, or this package
first, both work without an import cycle.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from detr_ssl.losses.focal import FocalParams, focal_terms, sigmoid_focal_loss
from detr_ssl.losses.output import LossOutput

if TYPE_CHECKING:
    from detr_ssl.losses.set_criterion import LossWeights, SetCriterion, build_criterion, count_boxes

__all__ = ["FocalParams", "LossOutput", "LossWeights", "SetCriterion", "build_criterion", "count_boxes",
           "focal_terms", "sigmoid_focal_loss"]

_CRITERION_NAMES = {"LossWeights", "SetCriterion", "build_criterion", "count_boxes"}


def __getattr__(name: str) -> Any:
    if name in _CRITERION_NAMES:
        return getattr(import_module("detr_ssl.losses.set_criterion"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
