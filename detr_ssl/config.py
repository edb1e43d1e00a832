"""Typed run configuration: the options every script shares, as dataclasses tyro turns into flags.

Two presets set every default at once: ``paper`` (the published Deformable DETR recipe, docs/PROTOCOLS.md)
and ``demo`` (the tiny model on the embedded demo data, minutes on a laptop CPU). A pretext task adds its
own option groups to :class:`PretrainConfig` (``detr_ssl.tasks``); this module never imports the tasks, nor
torch: ``--help`` builds its parser from here without importing either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import tyro

from detr_ssl.datasets.sizes import (
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
#: COCO evaluation implementations (``detr_ssl.evaluation.coco_eval``).
EvalBackend = Literal["pycocotools", "faster-coco-eval"]


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
    eval_backend: EvalBackend = "pycocotools"
    """COCO evaluation: pycocotools, or faster-coco-eval (the same numbers, computed in C++; the fast-eval
    extra)."""
    cpu: bool = False
    """Force the CPU even when a GPU is present."""
    compile: bool = False
    """Compile the model with torch.compile (Inductor; the whole model is one graph). Opt-in: every new image
    size costs compilation (minutes on a CPU), and on 2 CPU cores a compiled training step measured slower
    than eager (scripts/bench_compile.py, docs/PERFORMANCE.md); measure before using it on other hardware."""


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


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` (``--flag v`` or ``--flag=v``), if any."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def parse_with_presets(config_cls: type, presets: dict[str, Callable[[], Any]], data_flag: str,
                        argv: list[str], adjust: Callable[[Any], Any] | None = None) -> Any:
    """Builds a config from the command line: preset defaults first, then the flags given.

    ``--preset`` and ``--model-size`` choose the *defaults* tyro shows and fills in, so they are read
    before tyro runs; without ``--preset``, giving ``data_flag`` means 'paper', else 'demo'. A bad value
    falls through to tyro, which rejects it with its usual message. ``adjust`` then edits those defaults
    (a pretext task's own batch size, epochs, ...), still before the flags apply.
    """
    preset = flag_value(argv, "--preset") or ("paper" if flag_value(argv, data_flag) else "demo")
    default = presets.get(preset, presets["paper"])()
    size = flag_value(argv, "--model-size")
    if size in MODEL_PRESETS:
        model = replace(model_preset(size), train_backbone=default.model.train_backbone)
        default = replace(default, model_size=size, model=model)
    if adjust is not None:
        default = adjust(default)
    return tyro.cli(config_cls, default=default, args=argv)


def parse_finetune_args(argv: list[str]) -> FinetuneConfig:
    return parse_with_presets(FinetuneConfig, FINETUNE_PRESETS, "--train-json", argv)


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
class PretrainConfig:
    """Self-supervised pretraining of the whole Deformable DETR (backbone, encoder, decoder, heads).

    The options every pretext shares; each task adds its own option groups (``--task X --help`` lists
    them). The defaults shown are those of the preset in force: 'demo' without --data; add --data (or
    --preset paper) to --help to see the released recipe. Differences from the released code:
    docs/PROTOCOLS.md."""

    task: str = "detreg"
    """Pretext task: the name of a module in detr_ssl/tasks (updetr, detreg, pairdetr; backbone only:
    swav, densecl, ...). An unknown name lists them all."""
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
    )


PRETRAIN_PRESETS: dict[str, Callable[[], PretrainConfig]] = {"paper": paper_pretrain, "demo": demo_pretrain}


def with_backbone_init(model: ModelConfig, backbone_init: Path | None) -> ModelConfig:
    """``model`` starting from the backbone weights ``backbone_init`` (None: unchanged). Pretrained
    statistics are kept, so the normalisation becomes frozen BN, as in the papers."""
    if backbone_init is None:
        return model
    return replace(model, backbone_weights=backbone_init, backbone_norm="frozen_bn")


def _group_type(annotation: Any) -> type:
    """The dataclass of an option-group annotation (``Annotated[X, ...]`` -> ``X``)."""
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


#: What a pretext task exports into its output folder, the weights ``finetune.py --pretrained`` starts from.
PRETRAINED_FILE = "pretrained.pth"


class PretextOptions:
    """A pretext task's command line: its option groups and how it adjusts the presets' defaults.

    A task's options class lives in ``detr_ssl/tasks/options/<name>.py`` (registered with
    ``@register_options("<name>")``, no torch) and the task class in ``detr_ssl/tasks/<name>.py`` derives
    from it, so ``--task X --help`` builds X's parser without importing X's model code. Each option group
    (a dataclass) becomes ``--<group>.*`` flags and a field ``config.<group>`` of the task's config: see
    :meth:`config_class`.
    """

    name: ClassVar[str]

    #: Option groups this task adds to the shared pretraining options: group name -> dataclass (or
    #: ``Annotated[dataclass, tyro markers]``). Groups of base classes are inherited.
    option_groups: ClassVar[dict[str, Any]] = {}

    #: The flags that take a backbone pretext's SwAV-layout export when this task builds on one (a declared
    #: chain, e.g. DetReg on a SwAV ResNet): the comparison protocol passes the chain backbone to each.
    backbone_flags: ClassVar[tuple[str, ...]] = ("--backbone-init",)

    #: The config class of each task name, built once: the options class and the task class deriving from
    #: it must build the same class, or their configs would not pickle as one another's.
    _config_classes: ClassVar[dict[str, type[PretrainConfig]]] = {}

    @classmethod
    def all_option_groups(cls) -> dict[str, Any]:
        """:attr:`option_groups` of this class and its bases (a subclass's entry wins)."""
        groups: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            groups.update(vars(klass).get("option_groups", {}))
        return groups

    @classmethod
    def config_class(cls) -> type[PretrainConfig]:
        """``PretrainConfig`` plus a field per option group: the dataclass tyro turns into this task's CLI.

        Built once per task; it is reachable as ``detr_ssl.tasks.PretrainConfig_<name>`` so its instances
        pickle (a spawned DataLoader worker can rebuild the class by name)."""
        built = cls._config_classes.get(cls.name)
        if built is None:
            groups = [(group, annotation, field(default_factory=_group_type(annotation)))
                      for group, annotation in cls.all_option_groups().items()]
            built = make_dataclass(f"PretrainConfig_{cls.name}", groups, bases=(PretrainConfig,), frozen=True)
            built.__module__, built.__doc__ = "detr_ssl.tasks", PretrainConfig.__doc__
            cls._config_classes[cls.name] = built
        return built

    @classmethod
    def with_options(cls, config: PretrainConfig) -> PretrainConfig:
        """``config`` (the shared options, e.g. a preset) as this task's config, its groups at their defaults."""
        shared = {name: getattr(config, name) for name in PretrainConfig.__dataclass_fields__}
        return cls.config_class()(**{**shared, "task": cls.name})

    @classmethod
    def preset_config(cls, preset: str = "demo") -> PretrainConfig:
        """The task's full configuration under ``preset`` before any flag: what ``--preset`` alone gives."""
        return cls.defaults(cls.with_options(PRETRAIN_PRESETS[preset]()))

    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """The preset's defaults adjusted for this task, before the command-line flags apply (so a flag
        always wins): e.g. the batch size and epochs a backbone pretext needs on the demo."""
        return config
