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

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import timm
from torch import Tensor, nn
from torch.utils.data import Dataset

from detr_ssl.config import MultiCropConfig, PretrainConfig
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.multicrop import CropSpec, MultiCropDataset, collate_views
from detr_ssl.engine.checkpoint import atomic_torch_save
from detr_ssl.errors import ConfigError
from detr_ssl.tasks.base import PRETRAINED_FILE, PretextTask

SWAV_LAYOUT_FILE = "backbone_swav_layout.pth"


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


def demo_backbone_defaults(config: PretrainConfig, crops: MultiCropConfig) -> PretrainConfig:
    """The demo preset's schedule for a backbone pretext: batch statistics need bigger batches than the
    detector's 4, and a tiny ResNet on a few dozen images needs many short epochs."""
    if config.preset != "demo":
        return config
    optim = replace(config.optim, batch_size=16, epochs=100, lr_drop=80, lr=1e-3, weight_decay=1e-4)
    return replace(config, optim=optim, crops=crops)


class BackbonePretextTask(PretextTask):
    """Base of the backbone pretexts: ``build_model`` returns a module with a ``trunk`` attribute."""

    collate_fn = staticmethod(collate_views)
    #: Key prefix of the trunk in the official SwAV layout (DDP's wrapper).
    layout_prefix: ClassVar[str] = "module."

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        if config.crops.num_global < 2:
            raise ConfigError(f"--task {cls.name} needs at least 2 global crops, got --crops.num-global "
                              f"{config.crops.num_global}")
        return config

    def build_dataset(self, images: ImageFolderDataset, transforms=None) -> Dataset:
        """Multi-crop views of ``images``; the detection ``transforms`` do not apply to a backbone pretext."""
        return MultiCropDataset(images, crop_specs(self.config.crops))

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        """Pretext heads to store beside the trunk in the SwAV-layout file (names without the prefix)."""
        return {}

    def export(self, model: nn.Module, output_dir: Path) -> list[Path]:
        trunk = {key: value for key, value in model.trunk.state_dict().items()
                 if not key.endswith("num_batches_tracked")}
        ours = Path(output_dir) / PRETRAINED_FILE
        config = {"backbone": self.config.model.backbone, "backbone_norm": "frozen_bn"}
        atomic_torch_save({"model": {f"backbone.body.{k}": v for k, v in trunk.items()},
                           "task": self.name, "config": config}, ours)
        layout = Path(output_dir) / SWAV_LAYOUT_FILE
        heads = self.layout_heads(model)
        atomic_torch_save({self.layout_prefix + k: v for k, v in {**trunk, **heads}.items()}, layout)
        return [ours, layout]
