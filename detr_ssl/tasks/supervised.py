"""Supervised detection: labelled boxes as targets; Deformable DETR or Pair DETR and their set losses."""

from __future__ import annotations

from torch import nn

from detr_ssl.config import LossConfig, PairConfig
from detr_ssl.datasets.collate import Batch
from detr_ssl.losses import build_criterion
from detr_ssl.losses.pair_criterion import build_pair_criterion
from detr_ssl.models.config import ModelConfig
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.models.pair_detr import PairDETR, as_detections
from detr_ssl.tasks.base import LossResult, Task


class SupervisedTask(Task):
    """Deformable DETR with the focal + L1 + GIoU set loss."""

    def __init__(self, num_classes: int, loss: LossConfig) -> None:
        self.criterion = build_criterion(num_classes, loss)

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossResult:
        return self.criterion(model(batch.images, batch.mask), batch.targets)

    @staticmethod
    def detect(model: nn.Module, batch: Batch) -> DetectionOutput:
        return model(batch.images, batch.mask)


class SupervisedPairTask(Task):
    """Pair DETR with the keypoint-pair set loss; detections are the (corner, center) pair boxes."""

    def __init__(self, num_classes: int, loss: LossConfig, pair: PairConfig) -> None:
        self.criterion = build_pair_criterion(num_classes, loss, pair.temperature, pair.pair_weight)

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossResult:
        return self.criterion(model(batch.images, batch.mask), batch.targets)

    @staticmethod
    def detect(model: nn.Module, batch: Batch) -> DetectionOutput:
        return as_detections(model(batch.images, batch.mask))


def build_supervised(architecture: str, model: ModelConfig, num_classes: int, loss: LossConfig,
                     pair: PairConfig) -> tuple[nn.Module, SupervisedTask | SupervisedPairTask]:
    """The detector called ``architecture`` and the task that trains it."""
    if architecture == "pairdetr":
        return PairDETR(model, num_classes, pair.embed_dim), SupervisedPairTask(num_classes, loss, pair)
    if architecture == "deformable_detr":
        return build_model(model, num_classes), SupervisedTask(num_classes, loss)
    raise ValueError(f"unknown architecture {architecture!r}")
