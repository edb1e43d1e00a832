"""What the command lines of the backbone-only pretexts (SwAV, DenseCL, ...) share: the multi-crop views'
options and the demo preset's schedule.

Torch-free, so that ``--help`` answers fast; the tasks' shared code is ``detr_ssl/tasks/backbone_pretext.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from detr_ssl.config import PretextOptions, PretrainConfig

#: The export of a backbone pretext in the official SwAV checkpoints' layout, beside ``pretrained.pth``
#: (what ``--backbone-init`` and DetReg's ``--teacher-checkpoint`` take from a chain's backbone pretext).
SWAV_LAYOUT_FILE = "backbone_swav_layout.pth"


@dataclass(frozen=True)
class MultiCropConfig:
    """Random-resized-crop views of one image (SwAV's multi-crop; the two-view pretexts take two global views
    and no local ones)."""

    global_size: int = 224
    local_size: int = 96
    num_global: int = 2
    num_local: int = 6
    global_scale: tuple[float, float] = (0.14, 1.0)
    """Area range of a global crop, as a fraction of the image."""
    local_scale: tuple[float, float] = (0.05, 0.14)
    color_strength: float = 1.0
    """Colour distortion strength s of every view: ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with p=0.8
    (released SwAV: 1.0; DenseCL, as MoCo v2: 0.5)."""


def two_view_crops(size: int, scale: tuple[float, float], color_strength: float = 1.0) -> MultiCropConfig:
    """Two global views of ``size`` px covering ``scale`` of the image, no local ones."""
    return MultiCropConfig(global_size=size, num_local=0, global_scale=scale, color_strength=color_strength)


def moco_v2_crops(size: int) -> MultiCropConfig:
    """MoCo v2's views as released (DenseCL, RegionCL, SimSiam): area (0.2, 1), ColorJitter(0.4, 0.4, 0.4, 0.1)."""
    return two_view_crops(size, (0.2, 1.0), color_strength=0.5)


def byol_crops(size: int) -> MultiCropConfig:
    """BYOL's views (PixPro, LC-loss): area (0.08, 1); their colours are
    :func:`~detr_ssl.tasks.backbone_pretext.byol_view_specs`'."""
    return two_view_crops(size, (0.08, 1.0))


def demo_backbone_defaults(config: PretrainConfig, crops: MultiCropConfig) -> PretrainConfig:
    """The demo preset's schedule for a backbone pretext: batch statistics need bigger batches than the
    detector's 4, and a tiny ResNet on a few dozen images needs many short epochs."""
    if config.preset != "demo":
        return config
    optim = replace(config.optim, batch_size=16, epochs=100, lr_drop=80, lr=1e-3, weight_decay=1e-4)
    return replace(config, optim=optim, crops=crops)


def two_view_defaults(config: PretrainConfig, crops: Callable[[int], MultiCropConfig]) -> PretrainConfig:
    """A two-view pretext's preset: ``crops(224)`` (paper), or ``crops(64)`` and the demo's schedule."""
    if config.preset != "demo":
        return replace(config, crops=crops(224))
    return demo_backbone_defaults(config, crops(64))


class BackboneOptions(PretextOptions):
    option_groups = {"crops": MultiCropConfig}

    #: A backbone pretext starts from a random trunk: it builds on nothing.
    backbone_flags: ClassVar[tuple[str, ...]] = ()
