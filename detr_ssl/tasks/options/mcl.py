"""The command line of ``--task mcl`` (MCL): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/mcl.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, MultiCropConfig, two_view_crops, two_view_defaults


@dataclass(frozen=True)
class MclConfig:
    """MCL: montages of the batch at several scales, each read from its pyramid level (Guo et al., 2023)."""

    scales: tuple[int, ...] = (1, 2, 4)
    """Downsampling ratios r, starting with 1 (the full views); scale r is read from the pyramid level of
    stride 32 / r. Released: 1, 2, 4, 8; 8 (stride 4) has no level in the detector's pyramid."""
    scale_weights: tuple[float, ...] = (0.5, 0.25, 0.125)
    """Loss weight of each scale (released: 1/2, 1/4, 1/8, and 1/8 for scale 8)."""
    separate_views: bool = True
    """Each scale montages its own pair of views, as released; False: every scale reads the first pair."""
    head_convs: int = 4
    """3x3 conv -> BN -> ReLU layers the head runs on every sub-image's cell block."""
    head_hidden_dim: int = 2048
    """Hidden width of the head's projector (Linear -> BN -> ReLU -> Linear -> BN without affine)."""
    feature_dim: int = 256
    """Embedding width of the head and the predictors."""
    predictor_hidden_dim: int = 2048
    """Hidden width of each scale's predictor (Linear -> BN -> ReLU -> Linear)."""
    temperature: float = 1.0
    """Softmax temperature T; the cross-entropy is also scaled by 2T, as released."""
    momentum: float = 0.99
    """Target = momentum * target + (1 - momentum) * online, momentum rising along a half cosine to 1."""
    momentum_steps: int = 0
    """Length K of the momentum schedule in batches; 0: the whole run (epochs x batches per epoch, or
    --max-steps x accumulation steps when that ends it first)."""


def mcl_crops(size: int) -> MultiCropConfig:
    """MCL's views: ``size`` px crops of 20% to 100% of the image; their colours are BYOL's."""
    return two_view_crops(size, (0.2, 1.0))


@register_options("mcl")
class MclOptions(BackboneOptions):
    option_groups = {"mcl": MclConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """The released views (224 px, area 20% to 100%, BYOL's colours); the demo's 64 px views give every
        sub-image a 2 x 2 cell block, and its heads are narrower."""
        config = two_view_defaults(config, mcl_crops)
        if config.preset != "demo":
            return config
        # Each step runs 2 x (16 + 4 + 1) images through both encoders (DenseCL: 16 through each of two), so
        # 120 steps instead of 200: the loss still falls from its start, in a few minutes on a CPU.
        optim = replace(config.optim, epochs=60, lr_drop=48)
        return replace(config, optim=optim, mcl=replace(config.mcl, head_hidden_dim=256, feature_dim=64,
                                                        predictor_hidden_dim=256))
