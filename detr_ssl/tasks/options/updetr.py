"""The command line of ``--task updetr`` (UP-DETR): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/updetr.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import LossConfig, PretextOptions, PretrainConfig
from detr_ssl.tasks import register_options


@dataclass(frozen=True)
class UpDetrConfig:
    """UP-DETR random query patches (Dai et al., 2021)."""

    num_patches: int = 10
    """Random patches per image. The decoder's --model.num-queries are split evenly among them (num_queries /
    num_patches each, which must be a whole number, as in the released UP-DETR). The presets give 100 queries
    for 10 patches (paper) and 30 for 3 (demo); changing only this flag keeps the preset's query count and
    changes the queries per patch."""
    min_patch_size: int = 8
    """Smallest patch side in pixels."""
    patch_size: int = 128
    """Side the patches are resized to before the frozen backbone encodes them."""
    mask_ratio: float = 0.1
    """Probability that a query's patch feature is left out during pretraining (the released code's
    query-patch masking: zeroed, not rescaled)."""
    query_shuffle: bool = False
    no_object_weight: float = 0.1
    reconstruction_weight: float = 1.0


#: Queries per patch behind the presets' query count (the released UP-DETR: 100 queries, 10 patches).
DEFAULT_QUERIES_PER_PATCH = 10


@register_options("updetr")
class UpDetrOptions(PretextOptions):
    option_groups = {"updetr": UpDetrConfig, "loss": LossConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """Frozen backbone, 10 queries per patch and, on the paper preset, lr 1e-4 for 60 epochs with the
        drop at 40 (the released UP-DETR's schedule); every one of them yields to its flag. The demo takes 3
        patches: 3 x 10 queries = the tiny model's 30, so every query transfers to fine-tuning."""
        if config.preset == "demo":
            config = replace(config, updetr=replace(config.updetr, num_patches=3))
        model = replace(config.model, train_backbone=False,
                        num_queries=config.updetr.num_patches * DEFAULT_QUERIES_PER_PATCH)
        if config.preset == "paper":
            config = replace(config, optim=replace(config.optim, lr=1e-4, epochs=60, lr_drop=40))
        return replace(config, model=model)
