"""The task interface: what one training objective owns (targets, extra heads, loss)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol

from torch import Tensor, nn
from torch.utils.data import Dataset

from detr_ssl.datasets.collate import Batch

if TYPE_CHECKING:
    from detr_ssl.config import PretrainConfig
    from detr_ssl.datasets import ImageFolderDataset


class LossResult(Protocol):
    """What a task's loss returns: the scalar to back-propagate and named terms to log."""

    total: Tensor
    terms: dict[str, Tensor]


class Task(ABC):
    """A training objective. The engine calls :meth:`compute_loss` once per batch and knows nothing else."""

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: Batch) -> LossResult:
        """Runs the model on ``batch`` (possibly wrapped for distributed training) and returns the loss."""


class PretextTask(Task):
    """A self-supervised objective that pretrains the whole detector from unlabeled images.

    Subclasses register themselves with :func:`detr_ssl.tasks.register_task` and own, besides the
    loss, how pseudo-targets are made (:meth:`build_dataset`) and which heads are added to the detector
    (:meth:`build_model`, a module whose ``detector`` attribute is the Deformable DETR to export).
    """

    name: ClassVar[str]

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        """Adapts the preset to the task's published recipe (query count, learning rate, ...)."""
        return config

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The detector plus this task's heads (:meth:`exported` picks what fine-tuning gets)."""

    @abstractmethod
    def build_dataset(self, images: ImageFolderDataset) -> Dataset:
        """Training samples (image, target) from unlabeled ``images`` (returned without transforms)."""

    @staticmethod
    def exported(model: nn.Module) -> nn.Module:
        """What ``pretrained.pth`` holds: the detector without the pretext-only heads."""
        return model.detector
