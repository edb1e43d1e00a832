"""The command line of ``--task swav`` (SwAV): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/swav.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, MultiCropConfig, demo_backbone_defaults


@dataclass(frozen=True)
class SwavConfig:
    """SwAV: swapped prediction of Sinkhorn-Knopp cluster assignments (Caron et al., 2020)."""

    num_prototypes: int = 3000
    feature_dim: int = 128
    """Projection output (prototype) dimension."""
    hidden_dim: int = 2048
    """Projection MLP hidden width."""
    temperature: float = 0.1
    epsilon: float = 0.05
    """Entropy regularisation of the Sinkhorn-Knopp assignment."""
    sinkhorn_iterations: int = 3
    freeze_prototypes_steps: int = 313
    """Prototypes receive no gradient for this many optimizer steps (the paper: one ImageNet epoch)."""
    queue_length: int = 0
    """Earlier embeddings kept per process to fill the Sinkhorn batch (0: no queue)."""
    queue_start_step: int = 0
    """Optimizer step from which the queue takes part (it fills from the start)."""


@register_options("swav")
class SwavOptions(BackboneOptions):
    option_groups = {"swav": SwavConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        config = demo_backbone_defaults(config, MultiCropConfig(global_size=64, local_size=32, num_local=4))
        if config.preset == "demo":
            config = replace(config, swav=replace(config.swav, num_prototypes=30, feature_dim=64, hidden_dim=256,
                                                  freeze_prototypes_steps=20))
        return config
