"""The command line of ``--task detreg`` (DetReg): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/detreg.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import tyro

from detr_ssl.config import LossConfig, PretextOptions, PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.proposals import ProposalConfig


@dataclass(frozen=True)
class DetRegConfig:
    """DetReg: selective-search pseudo-boxes + embeddings aligned to a frozen teacher (Bar et al., 2022).

    Defaults are what the released code (amirbar/DETReg, configs/DETReg_top30_*.sh) does; docs/PROTOCOLS.md
    lists every deliberate difference."""

    teacher_checkpoint: Path | None = None
    """Teacher weights: the SwAV ResNet-50 (swav_800ep_pretrain.pth.tar, official layout), a timm/torchvision
    ResNet state dict or a backbone pretext's export. Required by the paper preset; the demo falls back to
    the detector's own frozen backbone."""
    teacher_arch: str | None = None
    """timm ResNet name of --teacher-checkpoint (default: read from the checkpoint's tensors)."""
    teacher_stage: Literal["layer2", "layer4"] = "layer2"
    """Teacher features, spatially averaged: layer2 (512-d for ResNet-50, the released default) or layer4
    (2048-d, the paper's description)."""
    teacher_augment: bool = True
    """Augment each teacher crop as released: colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8, greyscale p=0.2,
    Gaussian blur sigma 0.1-2 p=0.5."""
    embedding_layers: Literal["last", "all"] = "last"
    """Decoder layers that carry the embedding loss: the last (released) or every layer."""
    crop_size: int = 128
    """Side of the teacher crops (cut from the image before augmentation, as released; the demo preset's
    are 32 px, its images being 96-128 px)."""
    embedding_weight: float = 1.0
    num_classes: int = 1
    """Logits of the pseudo-box class head: 1, one class-agnostic logit (ours; the head is dropped at
    fine-tuning either way), or 91, the released head with every pseudo-box labelled 1 (to continue from or
    evaluate a released DETReg checkpoint with all its tensors)."""


#: The released recipe's batch: 24 images on each of 8 GPUs.
RELEASED_BATCH_PER_PROCESS = 24

#: Teacher crops of the demo preset. Its images are 96-128 px, so the released 128-px crops upsample every
#: proposal, and the teacher would see many times the detector's pixels and dominate the step.
DEMO_CROP_SIZE = 32


@register_options("detreg")
class DetRegOptions(PretextOptions):
    option_groups = {"detreg": Annotated[DetRegConfig, tyro.conf.OmitArgPrefixes],
                     "proposals": Annotated[ProposalConfig, tyro.conf.OmitArgPrefixes], "loss": LossConfig}
    backbone_flags = ("--teacher-checkpoint", "--backbone-init")

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """The released recipe: backbone frozen; on the paper preset 24 images per process (x 8 GPUs = 192),
        50 epochs (COCO; ImageNet: --epochs 5) with the lr drop at 40. The demo preset crops at
        `DEMO_CROP_SIZE`."""
        config = replace(config, model=replace(config.model, train_backbone=False))
        if config.preset == "paper":
            return replace(config, optim=replace(config.optim, batch_size=RELEASED_BATCH_PER_PROCESS,
                                                 epochs=50, lr_drop=40))
        return replace(config, detreg=replace(config.detreg, crop_size=DEMO_CROP_SIZE))
