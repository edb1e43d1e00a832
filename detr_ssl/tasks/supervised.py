"""Supervised detection: labelled boxes as targets; Deformable DETR or Pair DETR and their set losses."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from detr_ssl.config import LossConfig, PairConfig
from detr_ssl.datasets.collate import Batch
from detr_ssl.engine.evaluate import Detect, run_detector
from detr_ssl.losses import build_criterion
from detr_ssl.losses.pair_criterion import build_pair_criterion
from detr_ssl.models.config import ModelConfig
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.pair_detr import PairDETR, as_detections
from detr_ssl.losses.output import LossOutput
from detr_ssl.tasks.base import Task


class SupervisedTask(Task):
    """The model's output against the labelled targets, scored by ``criterion``.

    Args:
        criterion: ``(model output, targets) -> loss`` (the set loss of the model's architecture).
        detect: ``(model, batch) -> DetectionOutput`` for evaluation (models whose output is not a
            DetectionOutput, like Pair DETR, convert it here).
    """

    def __init__(self, criterion: Callable[..., LossOutput], detect: Detect = run_detector) -> None:
        self.criterion = criterion
        self.detect = detect

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        return self.criterion(model(batch.images, batch.mask), batch.targets)


def _detect_pairs(model: nn.Module, batch: Batch):
    return as_detections(model(batch.images, batch.mask))


def build_supervised(architecture: str, model: ModelConfig, num_classes: int, loss: LossConfig,
                     pair: PairConfig) -> tuple[nn.Module, SupervisedTask]:
    """The detector called ``architecture`` and the task that trains it."""
    if architecture == "pairdetr":
        criterion = build_pair_criterion(num_classes, loss, pair.temperature, pair.pair_weight)
        return PairDETR(model, num_classes, pair.embed_dim), SupervisedTask(criterion, _detect_pairs)
    if architecture == "deformable_detr":
        return build_model(model, num_classes), SupervisedTask(build_criterion(num_classes, loss))
    raise ValueError(f"unknown architecture {architecture!r}")
