"""The command line of ``--task pixpro`` (PixPro): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/pixpro.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, byol_crops, two_view_defaults


@dataclass(frozen=True)
class PixProConfig:
    """PixPro: pixel-to-propagation consistency with a momentum target encoder (Xie et al., 2021)."""

    feature_dim: int = 256
    """Projector output width (and the PPM's)."""
    hidden_dim: int = 4096
    """Projector hidden width (1x1 conv -> BatchNorm -> ReLU -> 1x1 conv)."""
    power: float = 2.0
    """Sharpness gamma of the PPM's similarity weights (released --pixpro-p of the training script)."""
    clamp_value: float = 0.0
    """Similarities below this are raised to it before the power (released: 0, only positive ones count)."""
    transform_layers: int = 1
    """The PPM's value transform g: 0 identity, 1 a 1x1 conv, 2 conv -> BatchNorm -> ReLU -> conv."""
    momentum: float = 0.99
    """Target = momentum * target + (1 - momentum) * online, momentum rising along a half cosine to 1."""
    momentum_steps: int = 0
    """Length K of the momentum schedule in batches; 0: the whole run (epochs x batches per epoch, or
    --max-steps x accumulation steps when that ends it first)."""
    positive_radius: float = 0.7
    """Two cells are a positive pair when their centres are closer than this many cell diagonals."""


@register_options("pixpro")
class PixProOptions(BackboneOptions):
    option_groups = {"pixpro": PixProConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """The released views: two 224 px crops of 8% to 100% of the image (its --crop 0.08)."""
        # 64 px on the demo: the ResNet-18's grid is 2x2, yet ~99% of crop pairs still have a positive cell
        # pair (the radius is in diagonals of the larger cell), as at 7x7.
        config = two_view_defaults(config, byol_crops)
        if config.preset != "demo":
            return config
        # Four trunk passes a step (DenseCL: two), so 120 steps instead of 200 keep the demo within minutes;
        # the demo loss has done most of its fall by then.
        optim = replace(config.optim, epochs=60, lr_drop=48)
        return replace(config, optim=optim, pixpro=replace(config.pixpro, feature_dim=64, hidden_dim=256))
