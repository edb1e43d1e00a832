"""The command line of ``--task densecl`` (DenseCL): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/densecl.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, moco_v2_crops, two_view_defaults
from detr_ssl.tasks.options.lcloss import LC_TEMPERATURE


@dataclass(frozen=True)
class DenseClConfig:
    """DenseCL: global + dense contrastive learning with a momentum encoder (Wang et al., 2021)."""

    feature_dim: int = 128
    hidden_dim: int = 2048
    queue_length: int = 65536
    momentum: float = 0.999
    """Key encoder = momentum * key encoder + (1 - momentum) * query encoder, after every step."""
    temperature: float = 0.2
    dense_weight: float = 0.5
    """Weight of the dense loss; the global loss gets 1 - dense_weight."""
    lc_weight: float = 0.0
    """Weight of an added LC-loss (Islam et al., 2023) between the query and key dense maps, matched through
    the views' crop geometry; 0 = DenseCL as released."""
    lc_temperature: float = LC_TEMPERATURE
    """Softmax temperature of that LC-loss."""


@register_options("densecl")
class DenseClOptions(BackboneOptions):
    option_groups = {"densecl": DenseClConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """MoCo v2's views as released (two global crops, ColorJitter(0.4, 0.4, 0.4, 0.1): strength 0.5)."""
        config = two_view_defaults(config, moco_v2_crops)
        if config.preset != "demo":
            return config
        # A queue as long as the 32 demo photos holds the previous epoch, one key per photo. With 256 it
        # holds 8 keys of every photo (false negatives), and the loss did not fall in the demo's 200 steps.
        return replace(config, densecl=replace(config.densecl, feature_dim=64, hidden_dim=256, queue_length=32,
                                               momentum=0.99))
