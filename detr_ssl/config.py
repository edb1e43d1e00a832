"""Typed run configuration: the single source of truth for every script's flags.

Two presets set every default at once: ``paper`` (the published Deformable DETR recipe, PROTOCOLS.md)
and ``demo`` (the tiny model on the embedded demo data, minutes on a laptop CPU). Scripts derive their
command line from these dataclasses with tyro; nothing else parses arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from detr_ssl.datasets.transforms import (
    DEMO_CROP,
    DEMO_EVAL_SIZE,
    DEMO_MAX_SIZE,
    DEMO_TRAIN_SCALES,
    PAPER_CROP,
    PAPER_EVAL_SIZE,
    PAPER_MAX_SIZE,
    PAPER_TRAIN_SCALES,
)
from detr_ssl.models.config import ModelConfig, model_preset

MixedPrecision = Literal["no", "fp16", "bf16"]


@dataclass(frozen=True)
class DataConfig:
    """Where the COCO-format data lives and how images are resized."""

    train_json: Path | None = None
    """COCO-format training annotations (default: the embedded demo set)."""
    val_json: Path | None = None
    """COCO-format validation annotations."""
    images: Path | None = None
    """Folder holding the training images (file_name in the JSON is relative to it)."""
    val_images: Path | None = None
    """Folder holding the validation images (default: --images)."""
    train_scales: tuple[int, ...] = PAPER_TRAIN_SCALES
    """Shorter-side sizes sampled for each training image."""
    max_size: int = PAPER_MAX_SIZE
    """Longer side cap after resizing."""
    crop: tuple[int, int] | None = PAPER_CROP
    """Random crop (min, max side) applied with probability 0.5 before the second resize; None: off."""
    eval_size: int = PAPER_EVAL_SIZE
    """Shorter side of validation images."""
    num_workers: int = 2
    """Data-loading worker processes per training process."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a step learning-rate drop and gradient clipping."""

    epochs: int = 50
    lr: float = 2e-4
    lr_backbone: float = 2e-5
    lr_linear_proj_mult: float = 0.1
    """Learning-rate factor for sampling offsets and reference points."""
    weight_decay: float = 1e-4
    lr_drop: int = 40
    """Epoch at which the learning rate is divided by 10."""
    clip_max_norm: float = 0.1
    """Gradient clipping max norm (0 disables)."""
    batch_size: int = 2
    """Images per process per step."""
    grad_accum_steps: int = 1


@dataclass(frozen=True)
class LossConfig:
    """Set-loss and matching weights; the matcher uses the same numbers, so they cannot disagree."""

    cls_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    aux_loss: bool = True
    """Losses on every decoder layer (and on two-stage proposals)."""


@dataclass(frozen=True)
class RunConfig:
    """Where results go and how the loop runs."""

    output_dir: Path = Path("outputs/finetune")
    seed: int = 42
    resume: str | None = None
    """Checkpoint to continue from, or 'auto' for the latest in --output-dir."""
    eval_every: int = 1
    """Evaluate every N epochs (and always after the last)."""
    checkpoint_every: int = 1
    """Write a checkpoint every N epochs (and always after the last)."""
    keep_last: int = 2
    """How many epoch checkpoints to keep besides checkpoint.pth."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (smoke tests, debugging)."""
    log_every: int = 10
    tensorboard: bool = False
    """Also write TensorBoard scalars (needs the [plots] extra)."""
    mixed_precision: MixedPrecision | None = None
    """Overrides `accelerate launch --mixed_precision`."""
    cpu: bool = False
    """Force the CPU even when a GPU is present."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised training of Deformable DETR on COCO-format data, then COCO evaluation."""

    preset: Literal["demo", "paper"] = "paper"
    """Defaults for everything: 'demo' (tiny model, embedded data) or 'paper' (published recipe).
    Without --train-json the demo preset is used."""
    model_size: Literal["tiny", "r50"] = "r50"
    """Architecture preset; --model.* flags override single fields."""
    pretrained: Path | None = None
    """Checkpoint to initialise from (non-strict; class head dropped when the class count differs)."""
    data: Annotated[DataConfig, tyro.conf.OmitArgPrefixes] = DataConfig()
    optim: Annotated[OptimConfig, tyro.conf.OmitArgPrefixes] = OptimConfig()
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = RunConfig()
    loss: LossConfig = LossConfig()
    model: ModelConfig = ModelConfig()


def paper_finetune() -> FinetuneConfig:
    return FinetuneConfig()


def demo_finetune() -> FinetuneConfig:
    return FinetuneConfig(
        preset="demo",
        model_size="tiny",
        model=model_preset("tiny"),
        data=DataConfig(train_scales=DEMO_TRAIN_SCALES, max_size=DEMO_MAX_SIZE, crop=DEMO_CROP,
                        eval_size=DEMO_EVAL_SIZE, num_workers=0),
        optim=OptimConfig(epochs=30, lr=4e-4, lr_backbone=4e-4, lr_drop=25, batch_size=4, clip_max_norm=0.1),
        run=RunConfig(output_dir=Path("outputs/demo-finetune"), log_every=5, eval_every=10, checkpoint_every=5),
    )


FINETUNE_PRESETS: dict[str, Callable[[], FinetuneConfig]] = {"paper": paper_finetune, "demo": demo_finetune}


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` (``--flag v`` or ``--flag=v``), if any."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def parse_finetune_args(argv: list[str]) -> FinetuneConfig:
    """Builds the config from the command line: preset defaults first, then the flags given.

    The preset and model size choose the *defaults* tyro shows and fills in, so they are read first.
    """
    preset = _flag_value(argv, "--preset") or ("paper" if _flag_value(argv, "--train-json") else "demo")
    if preset not in FINETUNE_PRESETS:
        preset = "paper"  # tyro rejects the bad value with its usual message
    default = FINETUNE_PRESETS[preset]()
    size = _flag_value(argv, "--model-size")
    if size in ("tiny", "r50"):
        default = replace(default, model_size=size, model=model_preset(size))
    return tyro.cli(FinetuneConfig, default=default, args=argv)


def to_plain(obj: Any) -> Any:
    """A config as JSON-friendly builtins (for checkpoints and logs)."""
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
