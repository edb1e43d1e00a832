"""The command line of ``--task lcloss`` (LC-loss): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/lcloss.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, byol_crops, two_view_defaults

LC_TEMPERATURE = 0.2
"""Softmax temperature of the LC-loss: an assumption (MoCo v2's and DenseCL's value); the paper's could not
be checked and no code was released."""


@dataclass(frozen=True)
class LcLossConfig:
    """LC-loss on BYOL: image-level bootstrap plus a pixel-level local contrastive loss (Islam et al., 2023)."""

    projection_dim: int = 256
    """Output width of the projector, the predictor and the dense head (BYOL: 256)."""
    hidden_dim: int = 4096
    """Hidden width of the projector, the predictor and the dense head (BYOL: 4096)."""
    base_momentum: float = 0.996
    """Target momentum at the first step; it rises to 1 along a half cosine over the run (BYOL: 0.996)."""
    lc_weight: float = 1.0
    """Weight of the LC-loss added to BYOL's loss (assumed: no released code)."""
    lc_temperature: float = LC_TEMPERATURE
    """Softmax temperature of the LC-loss (assumed: no released code)."""


@register_options("lcloss")
class LcLossOptions(BackboneOptions):
    option_groups = {"lcloss": LcLossConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """BYOL's views (two 224 px crops of 8-100% of the image); the demo shrinks views and heads."""
        config = two_view_defaults(config, byol_crops)
        if config.preset != "demo":
            return config
        # Four forward passes a batch (two views, two networks) cost twice DenseCL's, and the demo loss levels
        # off after about 100 batches: 60 epochs (120 batches) instead of 100. Over so few batches a target as
        # slow as BYOL's 0.996 barely moves, so the momentum starts from DenseCL's demo 0.99.
        optim = replace(config.optim, epochs=60, lr_drop=50)
        return replace(config, optim=optim, lcloss=replace(config.lcloss, projection_dim=64, hidden_dim=256,
                                                           base_momentum=0.99))
