"""The task interface: what one training objective owns (targets, extra heads, loss)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from torch import Tensor, nn
from torch.utils.data import Dataset

from detr_ssl.datasets.collate import Batch, collate_detection
from detr_ssl.engine.checkpoint import atomic_torch_save

if TYPE_CHECKING:
    from detr_ssl.config import PretrainConfig
    from detr_ssl.datasets import ImageFolderDataset


PRETRAINED_FILE = "pretrained.pth"


class LossResult(Protocol):
    """What a task's loss returns: the scalar to back-propagate and named terms to log."""

    total: Tensor
    terms: dict[str, Tensor]


@dataclass
class TermsLoss:
    """A :class:`LossResult` for tasks without a set-loss output (the backbone pretexts)."""

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

    #: How the training loader batches this task's samples.
    collate_fn: ClassVar[Callable[[list[Any]], Any]] = staticmethod(collate_detection)

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """The preset's defaults adjusted for this task, before the command-line flags apply (so a flag
        always wins): e.g. the batch size and epochs a backbone pretext needs on the demo."""
        return config

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        """Checks the final config (flags applied) against what the task requires: returns it unchanged, or
        raises a one-line ConfigError naming the conflicting flags (e.g. UP-DETR with --model.two-stage). It
        never overrides a flag; a task's preferred values belong in :meth:`defaults`."""
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

    def export(self, model: nn.Module, output_dir: Path) -> list[Path]:
        """Writes the weights fine-tuning starts from; returns the files, ``OUTPUT/pretrained.pth`` first.

        ``model`` is the unwrapped trained model. ``pretrained.pth`` holds ``{"model": state dict,
        "task", "config": model config}``; ``scripts/finetune.py --pretrained`` loads it.
        """
        from detr_ssl.config import (
            to_plain,  # config imports the task registry lazily, never at import
        )

        path = Path(output_dir) / PRETRAINED_FILE
        atomic_torch_save({"model": self.exported(model).state_dict(), "task": self.name,
                           "config": to_plain(self.config.model)}, path)
        return [path]
