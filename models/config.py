"""The detector's configuration and its named presets (a variant is a few lines, never a copied model).

Torch-free: the command-line entry points build their parsers from it without importing torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

#: Implementations of the multi-scale deformable attention (``detr_ssl.models.msda``).
Backend = Literal["auto", "pytorch", "mmcv"]


@dataclass(frozen=True)
class ModelConfig:
    """Deformable DETR hyper-parameters; defaults are the paper's (PROTOCOLS.md)."""

    backbone: str = "resnet50"
    """timm ResNet name."""
    backbone_norm: Literal["frozen_bn", "group_norm"] = "frozen_bn"
    """frozen_bn for pretrained backbones (paper); group_norm to train one from scratch."""
    backbone_weights: Path | None = None
    """Local timm/torchvision ResNet state dict (never downloaded)."""
    train_backbone: bool = True
    backbone_frozen_stages: int = 1
    """With a trainable backbone, the stem and this many first residual stages stay frozen: 1 (stem +
    layer1) is the paper's choice for pretrained weights; 0 trains them all (a backbone from scratch)."""
    hidden_dim: int = 256
    num_heads: int = 8
    num_feature_levels: int = 4
    """Backbone stages used (C3-C5 for 4 levels) plus extra stride-2 convolutions up to this count."""
    enc_points: int = 4
    dec_points: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 1024
    dropout: float = 0.1
    num_queries: int = 300
    with_box_refine: bool = False
    two_stage: bool = False
    """Encoder proposals become the decoder's queries. As in the original, class and box heads are per layer
    only with box refinement (plus one pair for the proposals); without it one shared pair scores all."""
    msda_backend: Backend = "auto"
    """auto: mmcv's CUDA kernel when importable and on CUDA, otherwise pure PyTorch."""
    encoder_checkpointing: bool = False
    """Recompute each encoder layer's activations in the backward pass instead of keeping them (activation
    checkpointing): same results, less training memory for one more encoder forward (how much of each:
    scripts/bench_memory.py, docs/PERFORMANCE.md)."""


MODEL_PRESETS: dict[str, Callable[[], ModelConfig]] = {}


def register_model_preset(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    """Registers a preset under its function name; tests parametrise over this registry."""
    MODEL_PRESETS[fn.__name__] = fn
    return fn


@register_model_preset
def r50() -> ModelConfig:
    """The published Deformable DETR: ResNet-50, 6+6 layers, 256-d, 300 queries, FFN 1024."""
    return ModelConfig()


@register_model_preset
def tiny() -> ModelConfig:
    """Seconds per epoch on a laptop CPU: tests and the embedded demo."""
    return ModelConfig(
        backbone="resnet18",
        backbone_norm="group_norm",
        backbone_frozen_stages=0,
        hidden_dim=64,
        num_heads=4,
        num_feature_levels=3,
        enc_points=2,
        dec_points=2,
        enc_layers=2,
        dec_layers=2,
        ffn_dim=128,
        dropout=0.0,
        num_queries=30,
    )


def model_preset(name: str, **overrides: object) -> ModelConfig:
    """The preset called ``name`` with some fields replaced."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return replace(MODEL_PRESETS[name](), **overrides)
