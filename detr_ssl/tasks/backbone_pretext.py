"""What backbone-only pretext tasks (SwAV, DenseCL) share: a plain BatchNorm ResNet trunk trained on
multi-crop views, and its export in the layouts everything downstream reads.

A backbone pretext trains only the ResNet (``model.trunk``, torchvision parameter names) plus its own
projection heads. BatchNorm is the ordinary, batch-statistics kind, so the export carries running
statistics: ``pretrained.pth`` holds the trunk under the detector's ``backbone.body.`` names (``finetune
--pretrained`` and ``--backbone-init`` read it) and ``backbone_swav_layout.pth`` holds it the way the
official SwAV checkpoints do (``module.conv1.weight``, ..., heads included), which the DetReg teacher
loader (``--teacher-checkpoint``) and every backbone-init option read unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import timm
from torch import Tensor, nn
from torch.utils.data import Dataset

from detr_ssl.config import OptimConfig, PretrainConfig
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.multicrop import CropSpec, MultiCropDataset, collate_views
from detr_ssl.distributed import world_size
from detr_ssl.engine.checkpoint import atomic_torch_save
from detr_ssl.errors import ConfigError
from detr_ssl.tasks.base import PRETRAINED_FILE, PretextTask
from detr_ssl.tasks.options.backbone import SWAV_LAYOUT_FILE, BackboneOptions, MultiCropConfig


def build_trunk(name: str) -> nn.Module:
    """A randomly initialised timm ResNet with BatchNorm, globally pooled, no classifier:
    ``(B, 3, H, W) -> (B, C)``; ``forward_features`` gives the last feature map."""
    return timm.create_model(name, pretrained=False, num_classes=0)


def crop_specs(crops: MultiCropConfig) -> list[CropSpec]:
    """The views of one sample: the global crops first, then the local ones, all with the same colour
    distortion and blur (the released SwAV's: strength 1, blur with probability 0.5 on every crop)."""
    global_view = CropSpec(crops.global_size, crops.global_scale, color_strength=crops.color_strength)
    local_view = CropSpec(crops.local_size, crops.local_scale, color_strength=crops.color_strength)
    return [global_view] * crops.num_global + [local_view] * crops.num_local


#: BYOL's colour jitter (brightness, contrast, saturation, hue), applied with probability 0.8 to both views.
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)


def byol_view_specs(crops: MultiCropConfig) -> list[CropSpec]:
    """BYOL's two asymmetric views (PixPro, LC-loss): jitter p 0.8 and greyscale p 0.2 on both; blur always on
    the first and with p 0.1 on the second, which alone is solarised (p 0.2)."""
    first = CropSpec(crops.global_size, crops.global_scale, jitter=BYOL_JITTER, blur_probability=1.0)
    return [first, replace(first, blur_probability=0.1, solarize_probability=0.2)]


@dataclass(frozen=True)
class RunBatches:
    """The training batches of one process: per epoch, and in the whole run (the length of the schedules
    that span the run: momentum, curricula)."""

    per_epoch: int
    total: int

    def epoch(self, batches_seen: int) -> int:
        """The epoch a process is in after ``batches_seen`` batches."""
        return batches_seen // self.per_epoch


def run_batches(num_images: int, optim: OptimConfig, max_steps: int | None) -> RunBatches:
    """Batches each process trains: ceil(images / (batch x processes)) per epoch (the loader keeps a last,
    partial batch), epochs x that in all, or fewer when ``max_steps`` optimizer steps of ``grad_accum_steps``
    batches end the run first."""
    per_epoch = math.ceil(num_images / (optim.batch_size * world_size()))
    total = optim.epochs * per_epoch
    return RunBatches(per_epoch, total if max_steps is None else min(total, max_steps * optim.grad_accum_steps))


class BackbonePretextTask(BackboneOptions, PretextTask):
    """Base of the backbone pretexts: ``build_model`` returns a module with a ``trunk`` attribute."""

    collate_fn = staticmethod(collate_views)
    #: Key prefix of the trunk in the official SwAV layout (DDP's wrapper).
    layout_prefix: ClassVar[str] = "module."
    #: Whether the task compares exactly two global views and no local ones (checked by :meth:`configure`).
    two_views_only: ClassVar[bool] = False
    #: Whether the views are BYOL's asymmetric pair (:func:`byol_view_specs`), whose colour jitter is fixed.
    byol_views: ClassVar[bool] = False
    #: The colour jitter (brightness, contrast, saturation, hue) the task's own views always use, if any
    #: (BYOL's with :attr:`byol_views`); ``--crops.color-strength`` is then refused rather than ignored.
    fixed_jitter: ClassVar[tuple[float, float, float, float] | None] = None

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        #: The task's own option group, ``config.<name>``.
        self.options = getattr(config, self.name)
        #: This process's training batches, known once :meth:`build_dataset` has run (see :meth:`schedule_length`).
        self.run_batches: RunBatches | None = None

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        crops = config.crops
        if crops.num_global < 2:
            raise ConfigError(f"--task {cls.name} needs at least 2 global crops, got --crops.num-global "
                              f"{crops.num_global}")
        if cls.two_views_only and (crops.num_global, crops.num_local) != (2, 0):
            raise ConfigError(f"--task {cls.name} compares exactly two global views; got --crops.num-global "
                              f"{crops.num_global} and --crops.num-local {crops.num_local} (use 2 and 0)")
        jitter = BYOL_JITTER if cls.byol_views else cls.fixed_jitter
        if jitter is not None and crops.color_strength != MultiCropConfig.color_strength:
            raise ConfigError(f"--task {cls.name} uses its fixed colour jitter {jitter}; "
                              f"--crops.color-strength {crops.color_strength} would be ignored (leave it out)")
        return config

    def view_specs(self) -> list[CropSpec]:
        """The views of one image, from ``--crops.*`` (BYOL's asymmetric pair with :attr:`byol_views`)."""
        return byol_view_specs(self.config.crops) if self.byol_views else crop_specs(self.config.crops)

    def build_dataset(self, images: ImageFolderDataset, transforms=None) -> Dataset:
        """Multi-crop views of ``images``; the detection ``transforms`` do not apply to a backbone pretext.
        Also counts the run's batches (:meth:`count_run_batches`)."""
        dataset = MultiCropDataset(images, self.view_specs())
        self.count_run_batches(len(dataset))
        return dataset

    def count_run_batches(self, num_images: int) -> None:
        """Sets :attr:`run_batches` for a dataset of ``num_images`` (a task building its own dataset calls it)."""
        self.run_batches = run_batches(num_images, self.config.optim, self.config.run.max_steps)

    def schedule_length(self, fixed: int = 0, flag: str | None = None) -> int:
        """Length in batches of a schedule over the run (a momentum rising to 1, a curriculum): ``fixed`` when
        positive (the ``flag`` that sets it), else every batch this process trains (:attr:`run_batches`).

        Raises:
            RuntimeError: when neither is known (the dataset not built yet).
        """
        if fixed:
            return fixed
        if self.run_batches is None:
            hint = f" or set {flag}" if flag else ""
            raise RuntimeError(f"{self.name}'s schedule needs the run's length: build the dataset first{hint}")
        return self.run_batches.total

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        """Pretext heads to store beside the trunk in the SwAV-layout file (names without the prefix): by
        default every tensor of ``model.encoder`` outside its trunk (MoCo-style models)."""
        encoder = getattr(model, "encoder", None)
        return {} if encoder is None else {k: v for k, v in encoder.state_dict().items() if not k.startswith("trunk.")}

    def export(self, model: nn.Module, output_dir: Path) -> list[Path]:
        """``pretrained.pth``: the trunk under the detector's ``backbone.body.`` names and, for a model with a
        ``pyramid`` (:class:`~detr_ssl.blocks.pyramid.DetectorPyramid`), its ``input_proj.`` levels; then the
        SwAV-layout trunk file."""
        trunk = {key: value for key, value in model.trunk.state_dict().items()
                 if not key.endswith("num_batches_tracked")}
        ours = Path(output_dir) / PRETRAINED_FILE
        config = {"backbone": self.config.model.backbone, "backbone_norm": "frozen_bn"}
        detector = {f"backbone.body.{k}": v for k, v in trunk.items()}
        pyramid = getattr(model, "pyramid", None)
        if pyramid is not None:
            detector.update({f"input_proj.{k}": v for k, v in pyramid.input_proj.state_dict().items()})
            config.update(hidden_dim=self.config.model.hidden_dim, num_feature_levels=len(pyramid.input_proj))
        atomic_torch_save({"model": detector, "task": self.name, "config": config}, ours)
        layout = Path(output_dir) / SWAV_LAYOUT_FILE
        heads = self.layout_heads(model)
        atomic_torch_save({self.layout_prefix + k: v for k, v in {**trunk, **heads}.items()}, layout)
        return [ours, layout]
