"""The task interface: what one training objective owns (its options, targets, extra heads, loss)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, get_args, get_origin

from torch import nn
from torch.utils.data import Dataset

from detr_ssl.config import PRETRAIN_PRESETS, PretrainConfig, to_plain
from detr_ssl.datasets.collate import Batch, collate_detection
from detr_ssl.engine.checkpoint import atomic_torch_save
from detr_ssl.losses.output import LossOutput

if TYPE_CHECKING:
    from detr_ssl.datasets import ImageFolderDataset


PRETRAINED_FILE = "pretrained.pth"


class Task(ABC):
    """A training objective. The engine calls :meth:`compute_loss` once per batch and knows nothing else."""

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        """Runs the model on ``batch`` (possibly wrapped for distributed training) and returns the loss."""


def _group_type(annotation: Any) -> type:
    """The dataclass of an option-group annotation (``Annotated[X, ...]`` -> ``X``)."""
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


class PretextTask(Task):
    """A self-supervised objective that pretrains the whole detector from unlabeled images.

    A task is one module ``detr_ssl/tasks/<name>.py`` whose class registers itself with
    ``@register_task("<name>")``. It owns its options (:attr:`option_groups`: dataclasses that become
    ``--<group>.*`` flags), how pseudo-targets are made (:meth:`build_dataset`), which heads are added to the
    detector (:meth:`build_model`, a module whose ``detector`` attribute is the Deformable DETR to export) and
    the loss. The configuration it receives is a :class:`~detr_ssl.config.PretrainConfig` with one extra
    field per option group (``config.densecl``, ``config.crops``, ...): see :meth:`config_class`.
    """

    name: ClassVar[str]

    #: Option groups this task adds to the shared pretraining options: group name -> dataclass (or
    #: ``Annotated[dataclass, tyro markers]``). Groups of base classes are inherited.
    option_groups: ClassVar[dict[str, Any]] = {}

    #: How the training loader batches this task's samples.
    collate_fn: ClassVar[Callable[[list[Any]], Any]] = staticmethod(collate_detection)

    #: The flags that take a backbone pretext's SwAV-layout export when this task builds on one (a declared
    #: chain, e.g. DetReg on a SwAV ResNet): the comparison protocol passes the chain backbone to each.
    backbone_flags: ClassVar[tuple[str, ...]] = ("--backbone-init",)

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config

    @classmethod
    def all_option_groups(cls) -> dict[str, Any]:
        """:attr:`option_groups` of this class and its bases (a subclass's entry wins)."""
        groups: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            groups.update(vars(klass).get("option_groups", {}))
        return groups

    @classmethod
    def config_class(cls) -> type[PretrainConfig]:
        """``PretrainConfig`` plus a field per option group: the dataclass tyro turns into this task's CLI.

        Built once per task; it is reachable as ``detr_ssl.tasks.PretrainConfig_<name>`` so its instances
        pickle (a spawned DataLoader worker can rebuild the class by name)."""
        built = vars(cls).get("_config_class")
        if built is None:
            fields = [(group, annotation, field(default_factory=_group_type(annotation)))
                      for group, annotation in cls.all_option_groups().items()]
            built = make_dataclass(f"PretrainConfig_{cls.name}", fields, bases=(PretrainConfig,), frozen=True)
            built.__module__, built.__doc__ = "detr_ssl.tasks", PretrainConfig.__doc__
            cls._config_class = built
        return built

    @classmethod
    def with_options(cls, config: PretrainConfig) -> PretrainConfig:
        """``config`` (the shared options, e.g. a preset) as this task's config, its groups at their defaults."""
        shared = {name: getattr(config, name) for name in PretrainConfig.__dataclass_fields__}
        return cls.config_class()(**{**shared, "task": cls.name})

    @classmethod
    def preset_config(cls, preset: str = "demo") -> PretrainConfig:
        """The task's full configuration under ``preset`` before any flag: what ``--preset`` alone gives."""
        return cls.defaults(cls.with_options(PRETRAIN_PRESETS[preset]()))

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
