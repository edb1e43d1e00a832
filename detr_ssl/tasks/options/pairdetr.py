"""The command line of ``--task pairdetr`` (Pair DETR): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/pairdetr.py``."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import tyro

from detr_ssl.config import LossConfig, PairConfig, PretextOptions, PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.proposals import ProposalConfig


@register_options("pairdetr")
class PairDetrOptions(PretextOptions):
    option_groups = {"pair": PairConfig, "proposals": Annotated[ProposalConfig, tyro.conf.OmitArgPrefixes],
                     "loss": LossConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """Backbone frozen by default, as in DetReg (the proposals are the same kind of targets)."""
        return replace(config, model=replace(config.model, train_backbone=False))
