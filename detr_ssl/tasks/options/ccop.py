"""The command line of ``--task ccop`` (CCOP): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/ccop.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import tyro

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, MultiCropConfig, two_view_crops, two_view_defaults
from detr_ssl.tasks.options.proposals import ProposalConfig


@dataclass(frozen=True)
class CcopConfig:
    """CCOP: image- and object-level contrast with a spatial-noise curriculum (Yang et al., 2021)."""

    feature_dim: int = 128
    """Output width of both heads."""
    hidden_dim: int = 2048
    """Hidden width of both heads."""
    head_dropout: float = 0.1
    """Dropout after each head's hidden layer (released LinearNormNeck), on the key encoder's heads too."""
    image_queue_length: int = 65536
    roi_queue_length: int = 65536
    momentum: float = 0.999
    """Key encoder = momentum * key encoder + (1 - momentum) * query encoder, before every step."""
    image_temperature: float = 0.2
    roi_temperature: float = 0.2
    roi_size: int = 7
    """RoIAlign output side; the object head reads the flattened roi_size^2 x pyramid-width features."""
    level_cells: float = 12.0
    """A box of side sqrt(area) is pooled from the shallowest pyramid level with stride x level_cells >= side
    (the deepest for larger boxes); 12 is the released rule (48/96/192 px for strides 4/8/16)."""
    num_jitter: int = 10
    """Jittered copies of each key box (the unjittered box is always a candidate too; 0 = only it)."""
    iou_thresholds: tuple[float, float] = (0.8, 0.4)
    """Curriculum of the least IoU a jittered copy needs to be a candidate: (start, end) of the run."""
    xy_jitter: tuple[float, float] = (0.15, 0.6)
    """Curriculum of the centre jitter: offsets uniform in +-m/2 box sides, m from start to end."""
    wh_jitter: tuple[float, float] = (0.35, 1.4)
    """Curriculum of the log-size jitter: log(w), log(h) offsets uniform in +-m/2, m from start to end."""
    curriculum_steps: int = 0
    """Length of the curriculum in batches; 0: the whole run (epochs x batches per epoch, or --max-steps x
    accumulation steps when that ends it first)."""
    triplet_margin: float = 0.4
    triplet_iou: float = 0.05
    """Two boxes of an image are a triplet negative pair when their IoU (key view) is below this."""
    image_weight: float = 1.0
    roi_weight: float = 1.0
    triplet_weight: float = 1.0
    part_threshold: float = 0.6
    """A proposal is kept in a view when more than this fraction of its area lies inside the crop."""
    min_box_area: float = 144.0
    """A pair needs more than this many view pixels of (clipped) box area in both views (released: 144 at
    224 px)."""
    max_view_tries: int = 10
    """Views drawn until one keeps a proposal."""
    min_proposal_size: float = 20.0
    """Proposals whose side sqrt(w h) is at most this (original pixels) are dropped."""
    max_proposal_aspect: float = 3.0
    """Proposals with w / h outside (1 / this, this) are dropped."""
    proposal_nms: float = 0.5
    """NMS IoU applied to the proposals in selective search's order (1 keeps all)."""


def ccop_crops(size: int) -> MultiCropConfig:
    """The released views' crops: ``size`` px covering 10% to 100% of the image."""
    return two_view_crops(size, (0.1, 1.0))


@register_options("ccop")
class CcopOptions(BackboneOptions):
    option_groups = {"ccop": CcopConfig, "proposals": Annotated[ProposalConfig, tyro.conf.OmitArgPrefixes]}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """The released views and up to 100 proposals an image; the demo shrinks heads, queues and box sizes."""
        config = two_view_defaults(config, ccop_crops)
        config = replace(config, proposals=replace(config.proposals, proposal_top_k=100))
        if config.preset != "demo":
            return config
        # 64 px views: the released 144 px^2 at 224 px scaled to the view, and 3 cells a level so that all
        # three pyramid levels of the demo detector (strides 8-32) receive boxes; an image queue as long as
        # the 32 photos (DenseCL's demo). 120 steps keep the demo within two minutes.
        ccop = replace(config.ccop, feature_dim=64, hidden_dim=256, image_queue_length=32, roi_queue_length=1024,
                       min_box_area=144.0 * (64 / 224) ** 2, level_cells=3.0, momentum=0.99)
        return replace(config, ccop=ccop, optim=replace(config.optim, epochs=60, lr_drop=48))
