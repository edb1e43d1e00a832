"""The command line of ``--task detco`` (DetCo): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/detco.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, moco_v2_crops, two_view_defaults


@dataclass(frozen=True)
class DetCoConfig:
    """DetCo: MoCo v2 at every ResNet stage between global views and 3x3 jigsaw patch sets (Xie et al., 2021)."""

    feature_dim: int = 128
    hidden_dim: int = 2048
    """Hidden width of every head, global and local."""
    queue_length: int = 65536
    """Length of each of the eight queues (global and local, per stage)."""
    momentum: float = 0.999
    """Key encoder = momentum * key encoder + (1 - momentum) * query encoder, before every step."""
    temperature: float = 0.2
    stage_weights: tuple[float, float, float, float] = (0.1, 0.4, 0.7, 1.0)
    """Weight of the C2, C3, C4 and C5 losses (each the sum of its three contrasts)."""
    patch_size: int = 64
    """Side of each jigsaw patch in pixels, cut at a random position inside its cell of the view's 3x3 grid;
    at most the smallest cell (--crops.global-size // 3), which it then equals: no jitter."""


@register_options("detco")
class DetCoOptions(BackboneOptions):
    option_groups = {"detco": DetCoConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """MoCo v2's views (two 224 px crops of 20-100% of the image, ColorJitter strength 0.5)."""
        config = two_view_defaults(config, moco_v2_crops)
        if config.preset != "demo":
            return config
        # 64 px views: 21 px cells, 16 px patches (PIRL's patch / cell ratio). Heads, queues and momentum as
        # DenseCL's demo (one queue holds the previous epoch of the 32 photos). Each step encodes each view
        # and its 9 patches, about twice DenseCL's work, so 120 steps instead of 200.
        optim = replace(config.optim, epochs=60, lr_drop=48)
        return replace(config, optim=optim, detco=replace(config.detco, feature_dim=64, hidden_dim=256,
                                                          queue_length=32, momentum=0.99, patch_size=16))
