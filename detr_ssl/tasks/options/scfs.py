"""The command line of ``--task scfs`` (SCFS): its option groups and how it sets the presets' defaults.

Torch-free, so that ``--help`` answers fast; the task itself is ``detr_ssl/tasks/scfs.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import register_options
from detr_ssl.tasks.options.backbone import BackboneOptions, MultiCropConfig, demo_backbone_defaults

#: The released views: 2 x 224 px at 25-100% of the image, 8 x 96 px at 5-25% (``scripts/run_pretrain.sh``).
RELEASED_CROPS = MultiCropConfig(global_size=224, local_size=96, num_global=2, num_local=8,
                                 global_scale=(0.25, 1.0), local_scale=(0.05, 0.25))


@dataclass(frozen=True)
class ScfsConfig:
    """SCFS: DINO self-distillation plus semantics-consistent feature search at C3-C5 (Song et al., 2023)."""

    out_dim: int = 65536
    """Width of the DINO head's output (its prototypes)."""
    hidden_dim: int = 2048
    """Hidden width of the DINO head's MLP (3 linear layers with GELU)."""
    bottleneck_dim: int = 256
    """Output of that MLP, L2-normalised before the last (weight-normalised) layer."""
    use_bn_in_head: bool = False
    """BatchNorm after the DINO head's hidden layers."""
    norm_last_layer: bool = True
    """Fix the norm of the last layer's rows to 1 (its weight_g is not trained)."""
    layer_out_dim: int = 256
    """Width of each stage head's output."""
    layer_hidden_dim: int = 2048
    """Hidden width of each stage head's MLP."""
    layer_bottleneck_dim: int = 256
    """Inner width of each stage head's residual bottleneck block."""
    momentum: float = 0.996
    """Teacher = momentum * teacher + (1 - momentum) * student, the momentum rising to 1 along a half cosine
    over the run."""
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    """The teacher's temperature after the warm-up."""
    warmup_teacher_temperature: float = 0.04
    """The teacher's temperature in the first epoch."""
    warmup_teacher_temperature_epochs: int = 50
    """Epochs of the linear warm-up of the teacher temperature (released script: 50 of 200)."""
    center_momentum: float = 0.9
    """Momentum of the running centre of the teacher's outputs (one centre per loss)."""
    freeze_last_layer_epochs: int = 1
    """Epochs during which the DINO head's last layer is not trained."""
    search_weight: float = 0.5
    """Weight of each stage's global + local feature-search loss (0: plain DINO)."""
    export_student: bool = False
    """Export the student's trunk instead of the teacher's (the one the release evaluates)."""


@register_options("scfs")
class ScfsOptions(BackboneOptions):
    option_groups = {"scfs": ScfsConfig}

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """The released views; the demo: 64 / 32 px crops, 4 local ones, narrow heads and a shorter schedule."""
        if config.preset != "demo":
            return replace(config, crops=RELEASED_CROPS)
        crops = replace(RELEASED_CROPS, global_size=64, local_size=32, num_local=4)
        config = demo_backbone_defaults(config, crops)
        # 120 steps (60 epochs of the 32 photos), the temperature warm-up a quarter of them as released;
        # momentum 0.99 so that the exported teacher moves away from its random start within the demo. The
        # DINO head normalises its hidden layers (a released option): without, the random trunk's outputs
        # barely differ between photos and the DINO term stays at the uniform output (ln out_dim) throughout.
        optim = replace(config.optim, epochs=60, lr_drop=48)
        options = replace(config.scfs, out_dim=256, hidden_dim=256, bottleneck_dim=64, use_bn_in_head=True,
                          layer_out_dim=32, layer_hidden_dim=256, layer_bottleneck_dim=64, momentum=0.99,
                          warmup_teacher_temperature_epochs=15)
        return replace(config, optim=optim, scfs=options)
