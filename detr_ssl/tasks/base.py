"""The task interface: what one training objective owns (its options, targets, extra heads, loss)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn
from torch.utils.data import Dataset

from detr_ssl.config import PRETRAINED_FILE, PretextOptions, PretrainConfig, to_plain
from detr_ssl.datasets.collate import Batch, collate_detection
from detr_ssl.engine.checkpoint import atomic_torch_save
from detr_ssl.losses.output import LossOutput

if TYPE_CHECKING:
    from detr_ssl.datasets import ImageFolderDataset


class Task(ABC):
    """A training objective. The engine calls :meth:`compute_loss` once per batch and knows nothing else."""

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        """Runs the model on ``batch`` (possibly wrapped for distributed training) and returns the loss."""


class PretextTask(Task, PretextOptions):
    """A self-supervised objective that pretrains the whole detector from unlabeled images.

    A task is one module ``detr_ssl/tasks/<name>.py`` whose class registers itself with
    ``@register_task("<name>")``. It owns its options (:attr:`option_groups`, dataclasses that become
    ``--<group>.*`` flags, and :meth:`defaults`: inherited from its torch-free options class, see
    :class:`~detr_ssl.config.PretextOptions`), how pseudo-targets are made (:meth:`build_dataset`), which heads
    are added to the detector (:meth:`build_model`, a module whose ``detector`` attribute is the Deformable
    DETR to export) and the loss. The configuration it receives is a :class:`~detr_ssl.config.PretrainConfig`
    with one extra field per option group (``config.densecl``, ``config.crops``, ...): see :meth:`config_class`.
    """

    #: How the training loader batches this task's samples.
    collate_fn: ClassVar[Callable[[list[Any]], Any]] = staticmethod(collate_detection)

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        """Checks the final config (flags applied) against what the task requires: returns it unchanged, or
        raises a one-line ConfigError naming the conflicting flags (e.g. UP-DETR with --model.two-stage). It
        never overrides a flag; a task's preferred values belong in :meth:`defaults`."""
        return config

    @classmethod
    def find_unused_parameters(cls, config: PretrainConfig) -> bool:
        """Whether a step may leave parameters without gradient, so distributed training must look for them:
        the detector's per-layer heads when its auxiliary losses are off."""
        loss = getattr(config, "loss", None)
        return loss is not None and not loss.aux_loss

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The detector plus this task's heads (:meth:`exported` picks what fine-tuning gets)."""

    @abstractmethod
    def build_dataset(self, images: ImageFolderDataset, transforms: Callable | None) -> Dataset:
        """Training samples from unlabeled ``images``; ``transforms`` are the detection augmentation."""

    @staticmethod
    def exported(model: nn.Module) -> nn.Module:
        """What ``pretrained.pth`` holds: the detector without the pretext-only heads."""
        return model.detector

    def input_size(self) -> list[int]:
        """[short side, long-side cap] of the largest images this pretraining trains on."""
        return [max(self.config.data.train_scales), self.config.data.max_size]

    def export_extras(self, model: nn.Module) -> dict[str, Any]:
        """Entries ``pretrained.pth`` holds beside the detector for using the pretext's own model after
        pretraining (fine-tuning ignores them); none by default."""
        return {}

    def export(self, model: nn.Module, output_dir: Path) -> list[Path]:
        """Writes the weights fine-tuning starts from; returns the files, ``OUTPUT/pretrained.pth`` first.

        ``model`` is the unwrapped trained model. ``pretrained.pth`` holds ``{"model": state dict,
        "task", "config": model config, "input_size": [short side, long-side cap]}`` (the largest
        pretraining scale, which ``scripts/predict.py`` runs it at); ``scripts/finetune.py --pretrained``
        loads it.
        """
        path = Path(output_dir) / PRETRAINED_FILE
        atomic_torch_save({"model": self.exported(model).state_dict(), "task": self.name,
                           "config": to_plain(self.config.model), "input_size": self.input_size(),
                           **self.export_extras(model)}, path)
        return [path]
