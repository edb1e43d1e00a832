"""The command line of ``--task regioncl`` (RegionCL-M): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/regioncl.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, moco_v2_crops, two_view_defaults


@dataclass(frozen=True)
class RegionClConfig:
    """RegionCL-M: MoCo v2 plus contrast of the two regions of cut-and-paste composites (Xu et al., 2021)."""

    feature_dim: int = 128
    hidden_dim: int = 2048
    queue_length: int = 65536
    momentum: float = 0.999
    """Key encoder = momentum * key encoder + (1 - momentum) * query encoder, before every step."""
    temperature: float = 0.2
    """Of both the instance and the region InfoNCE."""
    min_box_cells: int = 3
    """Smallest side of the pasted box, in C5 cells (32 px): the release's cutMixLower."""
    max_box_cells: int = 5
    """Largest side of the pasted box, in C5 cells, inclusive (the release's cutMixUpper 6 is exclusive);
    must leave part of the view's grid uncovered."""


@register_options("regioncl")
class RegionClOptions(BackboneOptions):
    option_groups = {"regioncl": RegionClConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        config = two_view_defaults(config, moco_v2_crops)
        if config.preset != "demo":
            return config
        # 64 px views are a 2 x 2 C5 grid: a one-cell box, half the side like the release's 3-5 of 7.
        # Queue, head and momentum as DenseCL's demo (a queue of one epoch's keys of the 32 photos).
        return replace(config, regioncl=replace(config.regioncl, feature_dim=64, hidden_dim=256, queue_length=32,
                                                momentum=0.99, min_box_cells=1, max_box_cells=1))
