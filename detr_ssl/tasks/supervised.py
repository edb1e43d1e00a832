"""Supervised detection: labelled boxes as targets, the Deformable DETR set loss."""

from __future__ import annotations

from torch import nn

from detr_ssl.config import LossConfig
from detr_ssl.datasets.collate import Batch
from detr_ssl.losses import build_criterion
from detr_ssl.tasks.base import LossResult, Task


class SupervisedTask(Task):
    def __init__(self, num_classes: int, loss: LossConfig) -> None:
        self.criterion = build_criterion(num_classes, loss)

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossResult:
        return self.criterion(model(batch.images, batch.mask), batch.targets)
