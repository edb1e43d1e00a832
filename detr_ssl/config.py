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
    PRETRAIN_MAX_SIZE,
    PRETRAIN_TRAIN_SCALES,
)
from detr_ssl.models.config import MODEL_PRESETS, ModelConfig, model_preset

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
    on_invalid_box: Literal["error", "drop"] = "error"
    """An empty box or one entirely outside its image: reject the file (naming the box), or drop such
    annotations with one warning counting them."""


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
class PairConfig:
    """Pair DETR: keypoint embeddings and the contrastive pairing loss (matching/box weights: --loss.*)."""

    embed_dim: int = 64
    temperature: float = 0.1
    """InfoNCE temperature of the corner/center pairing loss."""
    pair_weight: float = 1.0


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
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss stops the run with a message naming the step and terms, or (skip) skips that batch
    on every process; 20 non-finite batches in a row stop it anyway."""
    log_every: int = 10
    tensorboard: bool = False
    """Also write TensorBoard scalars (needs the [plots] extra)."""
    mixed_precision: MixedPrecision | None = None
    """Overrides `accelerate launch --mixed_precision`."""
    cpu: bool = False
    """Force the CPU even when a GPU is present."""
    compile: bool = False
    """Compile the model with torch.compile (Inductor). Opt-in: every new image size costs compilation
    (minutes on a CPU), and on 2 CPU cores a compiled training step measured slower than eager (0.7-0.8x,
    scripts/bench_compile.py); measure before using it on other hardware."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised training of Deformable DETR on COCO-format data, then COCO evaluation."""

    preset: Literal["demo", "paper"] = "paper"
    """Defaults for everything: 'demo' (tiny model, embedded data) or 'paper' (published recipe).
    Without --train-json the demo preset is used."""
    architecture: Annotated[Literal["deformable_detr", "pairdetr"], tyro.conf.arg(name="model")] = "deformable_detr"
    """Detector: Deformable DETR, or Pair DETR (corner + center keypoint decoders, --pair.* options)."""
    model_size: Literal["tiny", "r50"] = "r50"
    """Architecture preset; --model.* flags override single fields."""
    pretrained: Path | None = None
    """Checkpoint to initialise from (non-strict; class head dropped when the class count differs).
    Its backbone normalisation (frozen BN or GroupNorm) is adopted."""
    backbone_init: Path | None = None
    """Backbone-only initialisation (the usual baseline): a SwAV-layout / timm / torchvision ResNet file,
    or a backbone pretext's pretrained.pth. Implies frozen-BN normalisation."""
    data: Annotated[DataConfig, tyro.conf.OmitArgPrefixes] = DataConfig()
    optim: Annotated[OptimConfig, tyro.conf.OmitArgPrefixes] = OptimConfig()
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = RunConfig()
    loss: LossConfig = LossConfig()
    pair: PairConfig = PairConfig()
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


def _parse_with_presets(config_cls: type, presets: dict[str, Callable[[], Any]], data_flag: str,
                        argv: list[str], adjust: Callable[[Any], Any] | None = None) -> Any:
    """Builds a config from the command line: preset defaults first, then the flags given.

    ``--preset`` and ``--model-size`` choose the *defaults* tyro shows and fills in, so they are read
    before tyro runs; without ``--preset``, giving ``data_flag`` means 'paper', else 'demo'. A bad value
    falls through to tyro, which rejects it with its usual message. ``adjust`` then edits those defaults
    (a pretext task's own batch size, epochs, ...), still before the flags apply.
    """
    preset = _flag_value(argv, "--preset") or ("paper" if _flag_value(argv, data_flag) else "demo")
    default = presets.get(preset, presets["paper"])()
    size = _flag_value(argv, "--model-size")
    if size in MODEL_PRESETS:
        model = replace(model_preset(size), train_backbone=default.model.train_backbone)
        default = replace(default, model_size=size, model=model)
    if adjust is not None:
        default = adjust(default)
    return tyro.cli(config_cls, default=default, args=argv)


def parse_finetune_args(argv: list[str]) -> FinetuneConfig:
    return _parse_with_presets(FinetuneConfig, FINETUNE_PRESETS, "--train-json", argv)


def to_plain(obj: Any) -> Any:
    """A config as JSON-friendly builtins (for checkpoints and logs)."""
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class PretrainDataConfig:
    """Unlabeled images for pretraining, and their augmentation (DetReg's and UP-DETR's released recipe)."""

    data: Path | None = None
    """Image folder (searched recursively) or a COCO JSON whose labels are ignored (default: the
    embedded demo photos)."""
    image_dir: Path | None = None
    """Image folder of a COCO JSON given as --data (default: the JSON's folder)."""
    train_scales: tuple[int, ...] = PRETRAIN_TRAIN_SCALES
    """Shorter-side sizes sampled for each image."""
    max_size: int = PRETRAIN_MAX_SIZE
    crop: tuple[int, int] | None = PAPER_CROP
    """With probability 0.5: resize (short side 400/500/600 for a 384-600 crop), random crop of this
    (min, max) side, then the multi-scale resize; None: resize only."""
    num_workers: int = 2


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
    proposal_cache: Path | None = None
    """Proposal cache folder (scripts/precompute_proposals.py); default: OUTPUT/proposals."""
    require_cache: bool = False
    """Fail instead of computing proposals missing from the cache."""
    proposal_resize: int = 128
    proposal_top_k: int = 30
    proposal_draws: int = 1
    """Different seeded top-k draws of selective search per image, each cached; every load picks one at
    random. The released code reruns selective search at each load (a new draw every epoch); 1 keeps one
    fixed draw per image."""
    crop_size: int = 128
    """Side of the teacher crops (cut from the image before augmentation, as released)."""
    embedding_weight: float = 1.0
    num_classes: int = 1
    """Logits of the pseudo-box class head: 1, one class-agnostic logit (ours; the head is dropped at
    fine-tuning either way), or 91, the released head with every pseudo-box labelled 1 (to continue from or
    evaluate a released DETReg checkpoint with all its tensors)."""


@dataclass(frozen=True)
class MultiCropConfig:
    """Random-resized-crop views of one image (SwAV multi-crop; DenseCL uses the two global views)."""

    global_size: int = 224
    local_size: int = 96
    num_global: int = 2
    num_local: int = 6
    global_scale: tuple[float, float] = (0.14, 1.0)
    """Area range of a global crop, as a fraction of the image."""
    local_scale: tuple[float, float] = (0.05, 0.14)
    color_strength: float = 1.0
    """Colour distortion strength s of every view: ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with p=0.8
    (released SwAV: 1.0; DenseCL, as MoCo v2: 0.5)."""


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


@dataclass(frozen=True)
class DenseClConfig:
    """DenseCL: global + dense contrastive learning with a momentum encoder (Wang et al., 2021)."""

    feature_dim: int = 128
    hidden_dim: int = 2048
    queue_length: int = 65536
    momentum: float = 0.999
    """Key encoder = momentum * key encoder + (1 - momentum) * query encoder, after every step."""
    temperature: float = 0.2
    dense_weight: float = 0.5
    """Weight of the dense loss; the global loss gets 1 - dense_weight."""


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised pretraining of the whole Deformable DETR (backbone, encoder, decoder, heads).

    The defaults shown are those of the preset in force: 'demo' without --data; add --data (or
    --preset paper) to --help to see the released recipes. DetReg (amirbar/DETReg): SwAV ResNet-50 teacher
    and backbone (required), layer2 targets, 300 queries, 24 images per process on 8 processes (192),
    AdamW lr 2e-4, 50 epochs on COCO (5 on ImageNet: --epochs 5), lr drop at 40, short side 320-480, long
    side <= 600, crop branch 384-600. UP-DETR: 100 queries for 10 patches, lr 1e-4, 60 epochs, drop at 40.
    Differences from the released code: docs/PROTOCOLS.md."""

    task: str = "detreg"
    """Pretext task (see detr_ssl.tasks.TASKS): updetr, detreg, pairdetr; backbone only: swav, densecl."""
    preset: Literal["demo", "paper"] = "paper"
    """Defaults for everything: 'demo' (tiny model, embedded photos) or 'paper' (published recipe).
    Without --data the demo preset is used."""
    model_size: Literal["tiny", "r50"] = "r50"
    backbone_init: Path | None = None
    """Backbone weights to start from: a SwAV-layout file (ours or the official one), a timm/torchvision
    ResNet state dict, or a backbone pretext's pretrained.pth. Implies frozen-BN normalisation."""
    data: Annotated[PretrainDataConfig, tyro.conf.OmitArgPrefixes] = PretrainDataConfig()
    optim: Annotated[OptimConfig, tyro.conf.OmitArgPrefixes] = OptimConfig(lr_backbone=0.0)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = RunConfig(output_dir=Path("outputs/pretrain"))
    detreg: Annotated[DetRegConfig, tyro.conf.OmitArgPrefixes] = DetRegConfig()
    updetr: UpDetrConfig = UpDetrConfig()
    pair: PairConfig = PairConfig()
    swav: SwavConfig = SwavConfig()
    densecl: DenseClConfig = DenseClConfig()
    crops: MultiCropConfig = MultiCropConfig()
    loss: LossConfig = LossConfig()
    model: ModelConfig = ModelConfig(train_backbone=False)


def paper_pretrain() -> PretrainConfig:
    return PretrainConfig()


def demo_pretrain() -> PretrainConfig:
    return PretrainConfig(
        preset="demo",
        model_size="tiny",
        model=model_preset("tiny", train_backbone=False),
        data=PretrainDataConfig(train_scales=DEMO_TRAIN_SCALES, max_size=DEMO_MAX_SIZE, crop=DEMO_CROP,
                                num_workers=0),
        optim=OptimConfig(epochs=10, lr=4e-4, lr_backbone=0.0, lr_drop=8, batch_size=4),
        run=RunConfig(output_dir=Path("outputs/demo-pretrain"), log_every=5, checkpoint_every=5),
        # 3 patches x 10 queries (UP-DETR's defaults) = the tiny model's 30 queries, so every query transfers
        # to fine-tuning.
        updetr=UpDetrConfig(num_patches=3),
    )


PRETRAIN_PRESETS: dict[str, Callable[[], PretrainConfig]] = {"paper": paper_pretrain, "demo": demo_pretrain}


def parse_pretrain_args(argv: list[str]) -> PretrainConfig:
    """The pretraining config; the chosen task adjusts the preset's defaults first (flags still win)."""
    from detr_ssl.tasks import TASKS  # the tasks import this module

    def task_defaults(config: PretrainConfig) -> PretrainConfig:
        task = _flag_value(argv, "--task") or config.task
        return TASKS[task].defaults(replace(config, task=task)) if task in TASKS else config

    return _parse_with_presets(PretrainConfig, PRETRAIN_PRESETS, "--data", argv, task_defaults)


def with_backbone_init(model: ModelConfig, backbone_init: Path | None) -> ModelConfig:
    """``model`` starting from the backbone weights ``backbone_init`` (None: unchanged). Pretrained
    statistics are kept, so the normalisation becomes frozen BN, as in the papers."""
    if backbone_init is None:
        return model
    return replace(model, backbone_weights=backbone_init, backbone_norm="frozen_bn")
