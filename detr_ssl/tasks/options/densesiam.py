"""The command line of ``--task densesiam`` (DenseSiam): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/densesiam.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, moco_v2_crops, two_view_defaults

#: How a region embedding pools the features under its soft mask (``detr_ssl.losses.densesiam``).
RegionPooling = Literal["sum", "mean"]


@dataclass(frozen=True)
class DenseSiamConfig:
    """DenseSiam: SimSiam-style pixel and region similarity on the overlap of two views (Zhang et al., 2022)."""

    num_regions: int = 27
    """Output channels of the dense projector, which are also the soft region masks (released num_classes)."""
    hidden_dim: int = 128
    """Hidden width of the dense projector and bottleneck of the dense predictor."""
    region_dim: int = 128
    """Hidden and output width of the region projector and region predictor."""
    grid_size: int = 7
    """Side of the grid the overlap of the two views is RoIAligned to (both views to the same grid)."""
    pixel_loss: Literal["cosine", "cross-entropy"] = "cosine"
    """PixSim's similarity: negative cosine (the paper's pretraining, SimSiam's) or the released segmentation
    code's soft cross-entropy ``-softmax(target) . log_softmax(prediction)`` over the channels."""
    region_pooling: RegionPooling = "sum"
    """Region embedding = mask-weighted sum of the features (released) or mean (sum / mask total)."""
    temperature: float = 0.1
    """RegionSim's InfoNCE temperature."""
    pixel_weight: float = 1.0
    """Weight of PixSim in the total loss (released loss_simsiam_weight)."""
    region_weight: float = 0.1
    """Weight of RegionSim in the total loss (released config's loss_kernel_cross_weight)."""
    region_start_step: int = 0
    """RegionSim counts from this training batch on (weight 0 before; the masks of an untrained projector
    are arbitrary). The released config turns it on for its last 2 of 10 epochs."""


@register_options("densesiam")
class DenseSiamOptions(BackboneOptions):
    option_groups = {"densesiam": DenseSiamConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """SimSiam's views (MoCo v2's: two global crops, ColorJitter(0.4, 0.4, 0.4, 0.1))."""
        return two_view_defaults(config, moco_v2_crops)
