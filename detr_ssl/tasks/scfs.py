"""SCFS backbone pretraining (Song et al., "Semantics-Consistent Feature Search for Self-Supervised Visual
Representation Learning", ICCV 2023; arXiv 2212.06486): DINO plus a feature search at three ResNet stages.

DINO: a student (the ResNet trunk plus the DINO head: an MLP to a bottleneck, L2 normalisation and a
weight-normalised linear layer to ``out_dim`` prototypes, on the average-pooled C5) sees two global crops
and ``num_local`` local crops of each image; a teacher, its momentum copy, sees the global crops. The
teacher's outputs, centred and sharpened, are the targets of the student's outputs of every other view
(:class:`~detr_ssl.losses.dino.DinoLoss`).

Feature search, at C3, C4 and C5 (torchvision's ``layer2``-``layer4``): each stage has its own head (a
residual bottleneck block, average pooling, an MLP with BatchNorm, L2 normalisation) in the student and the
teacher. Globally, that head's outputs of the two global crops are distilled across the crops as in DINO
(centred); locally, each local crop's pooled student feature searches the teacher's map of the first global
view (:func:`~detr_ssl.losses.scfs.search`), and the teacher's head output of the searched map is the
target, sharpened but not centred, of the student's head output of that crop. The loss is
``L_dino + sum over stages of search_weight * (L_global + L_local)``. The teacher's momentum rises from
0.996 to 1 along a half cosine over the run; its temperature warms up linearly over the first epochs.

Choices and known differences from the released code (skyoux/scfs at ``7bb7c37``, ``main_scfs.py``,
``models/scfs.py``, ``scripts/run_pretrain.sh``):

- The search attention is the release's: the plain cosine map, neither softmaxed nor normalised to sum to
  one (the paper's "attention"; the code has no softmax). Only the first global view is searched, and the
  searched teacher targets are not centred (the global ones are), as released.
- Views are DINO's (``augmentations/dino_augmentation.py``) but resized bilinearly (the release: bicubic).
- The momentum update runs at the start of each training batch, with the momentum the release uses after the
  previous batch's step (its schedule: per batch over the whole run), so the teacher follows the same
  sequence; it moves parameters only (the teacher's BatchNorm statistics are its own, from its own batches).
  The release's last update, after the final step, is not made. The schedule counts the batches the run
  trains (``--max-steps`` included; the release drops the last partial batch of an epoch, we keep it).
- Epochs (the teacher-temperature warm-up and the frozen last layer) are counted in batches: epoch =
  batches trained // batches per epoch of this run. With fewer epochs than the warm-up, the temperature
  never reaches its final value (the release fails to build its schedule then).
- The last layer is frozen in the first epoch by taking no gradient (it stays in the graph for DDP), where
  the release drops its gradient; with AdamW's decoupled weight decay only ``weight_v`` shrinks, which does
  not change the weight-normalised layer.
- AdamW from the shared optimiser config instead of SGD (lr 0.1 per 256 images, cosine to 0.0048, 10 warm-up
  epochs, weight decay 1e-4 without decay on biases and norms), the shared global gradient clipping instead
  of the release's per-parameter clipping at 3.0, no mixed precision; per-process BatchNorm instead of
  SyncBatchNorm. The release's unused ``feature_crops_*`` options (a box generator it never calls) are left
  out.
- The export: the teacher's trunk by default, as the release's evaluations read (``--checkpoint_key
  teacher``); ``--scfs.export-student`` writes the student's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.momentum import cosine_momentum, ema_update_, momentum_copy
from detr_ssl.blocks.pyramid import trunk_stages
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import CropSpec, Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.dino import DinoLoss, teacher_temperature
from detr_ssl.losses.output import LossOutput
from detr_ssl.losses.scfs import local_search_loss, search
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BYOL_JITTER, BackbonePretextTask, MultiCropConfig, build_trunk
from detr_ssl.tasks.options.scfs import ScfsConfig, ScfsOptions

#: The stages the feature search runs on: C3, C4, C5 (indices into :func:`trunk_stages`' ``[C2, .., C5]``).
SEARCHED_STAGES = (1, 2, 3)
STAGE_NAMES = ("c3", "c4", "c5")


class WeightNormLinear(nn.Module):
    """A linear layer without bias whose rows are ``weight_g * weight_v / |weight_v|`` (the parameters of
    ``torch.nn.utils.weight_norm``), ``weight_g`` starting at 1 and trained only without ``fixed_norm``."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_norm)
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach())

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        """``frozen``: the same output without gradient to the layer (which stays in the graph, so DDP sees
        every parameter used)."""
        g, v = self.weight_g, self.weight_v
        if frozen:
            g, v = g.detach() + 0 * g, v.detach() + 0 * v
        # torch's own weight-norm kernel (what torch.nn.utils.weight_norm and its parametrisation call).
        return F.linear(x, torch._weight_norm(v, g, 0))


class DinoHead(nn.Module):
    """DINO's projection head: ``[Linear -> (BN) -> GELU] x 2 -> Linear`` to the bottleneck (weights
    truncated-normal, std 0.02, zero biases), L2 normalisation, then :class:`WeightNormLinear`."""

    def __init__(self, in_dim: int, options: ScfsConfig) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, options.hidden_dim, options.bottleneck_dim, num_layers=3,
                       norm="bn" if options.use_bn_in_head else "none", activation=nn.GELU)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(options.bottleneck_dim, options.out_dim, options.norm_last_layer)

    def forward(self, features: Tensor, freeze_last_layer: bool = False) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(features), dim=-1), frozen=freeze_last_layer)


class StageHead(nn.Module):
    """SCFS's head on one stage's map: a residual bottleneck block (1x1 conv to ``layer_bottleneck_dim``,
    3x3 conv, 1x1 conv back, each with BatchNorm, ReLU after the sum), average pooling, ``Linear -> BN ->
    ReLU -> Linear -> BN`` and L2 normalisation: ``(N, C, H, W) -> (N, layer_out_dim)``."""

    def __init__(self, channels: int, options: ScfsConfig) -> None:
        super().__init__()
        width = options.layer_bottleneck_dim
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.mlp = nn.Sequential(*mlp(channels, options.layer_hidden_dim, options.layer_out_dim, norm="bn"),
                                 nn.BatchNorm1d(options.layer_out_dim))

    def forward(self, features: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(features)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.relu(self.bn3(self.conv3(out)) + features)
        return F.normalize(self.mlp(out.mean(dim=(2, 3))), dim=-1)


class Encoded(NamedTuple):
    """One network's outputs for a batch of crops (a tuple, so DDP and Accelerate walk it)."""

    dino: Tensor
    """``(N, out_dim)`` DINO head outputs (logits)."""
    stages: tuple[Tensor, ...]
    """``(N, layer_out_dim)`` per searched stage: that stage head's L2-normalised outputs."""
    maps: tuple[Tensor, ...]
    """``(N, C, H, W)`` per searched stage: the trunk's feature map."""


class ScfsEncoder(nn.Module):
    """Trunk + DINO head on the pooled C5 + one :class:`StageHead` per searched stage."""

    def __init__(self, trunk: nn.Module, options: ScfsConfig) -> None:
        super().__init__()
        self.trunk = trunk
        channels = [info["num_chs"] for info in trunk.feature_info][-len(SEARCHED_STAGES):]
        self.head = DinoHead(channels[-1], options)
        self.stage_heads = nn.ModuleList(StageHead(width, options) for width in channels)

    def forward(self, images: Tensor, freeze_last_layer: bool = False) -> Encoded:
        stages = trunk_stages(self.trunk, images)
        maps = tuple(stages[index] for index in SEARCHED_STAGES)
        dino = self.head(stages[-1].mean(dim=(2, 3)), freeze_last_layer)
        return Encoded(dino, tuple(head(features) for head, features in zip(self.stage_heads, maps, strict=True)),
                       maps)


class ScfsOutputs(NamedTuple):
    """A batch through student and teacher (a tuple, so DDP and Accelerate walk it). Global rows are view
    0 then view 1; local rows crop-major (crop 0 of every image, crop 1, ...)."""

    student_global: Encoded
    student_local: Encoded
    teacher_global: Encoded
    """No gradient."""
    targets: tuple[Tensor, ...]
    """``(L * B, layer_out_dim)`` per stage: the teacher's stage head on each local crop's searched map."""
    attention: tuple[Tensor, ...]
    """``(L * B, 1, H, W)`` per stage: each local crop's search attention over the first global view."""


class ScfsModel(nn.Module):
    """Student, its momentum copy (the teacher), the losses' centres and the count of training batches
    (buffers, so a resumed run continues the centres and the schedules)."""

    def __init__(self, trunk: nn.Module, options: ScfsConfig) -> None:
        super().__init__()
        self.student = ScfsEncoder(trunk, options)
        self.teacher = momentum_copy(self.student)
        self.dino_loss = DinoLoss(options.out_dim, options.student_temperature, options.center_momentum)
        self.stage_losses = nn.ModuleList(
            DinoLoss(options.layer_out_dim, options.student_temperature, options.center_momentum)
            for _ in SEARCHED_STAGES)
        self.export_student = options.export_student
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    @property
    def exported(self) -> ScfsEncoder:
        """The network whose trunk the export writes (the teacher unless ``--scfs.export-student``)."""
        return self.student if self.export_student else self.teacher

    @property
    def trunk(self) -> nn.Module:
        """What the export writes."""
        return self.exported.trunk

    def forward(self, global_views: list[Tensor], local_views: list[Tensor], freeze_last_layer: bool = False
                ) -> ScfsOutputs:
        """The student sees the global and the local crops as two batches, the teacher the global ones, as
        released (BatchNorm statistics are per batch)."""
        student_global = self.student(torch.cat(global_views), freeze_last_layer)
        student_local = self.student(torch.cat(local_views), freeze_last_layer)
        with torch.no_grad():
            teacher_global = self.teacher(torch.cat(global_views))
            first_views = [features.chunk(len(global_views))[0] for features in teacher_global.maps]
            found = [search(local_map.detach(), first_view)
                     for local_map, first_view in zip(student_local.maps, first_views, strict=True)]
            targets = tuple(head(searched) for head, (_, searched) in zip(self.teacher.stage_heads, found, strict=True))
        attention = tuple(attention for attention, _ in found)
        return ScfsOutputs(student_global, student_local, teacher_global, targets, attention)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """Moves the teacher's parameters towards the student's (its BatchNorm statistics stay its own)."""
        ema_update_(self.teacher, self.student, momentum, copy_buffers=False)


def dino_view_specs(crops: MultiCropConfig) -> list[CropSpec]:
    """DINO's views: ColorJitter (0.4, 0.4, 0.2, 0.1) with p 0.8 and greyscale p 0.2 on all; blur always on
    the first global crop, with p 0.1 (then solarize, p 0.2) on the second and with p 0.5 on the local ones."""
    first = CropSpec(crops.global_size, crops.global_scale, jitter=BYOL_JITTER, blur_probability=1.0)
    second = replace(first, blur_probability=0.1, solarize_probability=0.2)
    local = CropSpec(crops.local_size, crops.local_scale, jitter=BYOL_JITTER, blur_probability=0.5)
    return [first, second] + [local] * crops.num_local


@register_task("scfs")
class ScfsTask(ScfsOptions, BackbonePretextTask):
    fixed_jitter = BYOL_JITTER

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        crops, options = config.crops, config.scfs
        if crops.num_global != 2:
            raise ConfigError(f"--task scfs distils between exactly two global crops; got --crops.num-global "
                              f"{crops.num_global} (use 2)")
        config = super().configure(config)
        if crops.num_local < 1 or config.optim.batch_size * crops.num_local < 2:
            raise ConfigError(f"--task scfs searches local crops and normalises them as a batch: needs "
                              f"--crops.num-local >= 1 and --batch-size x --crops.num-local >= 2, got "
                              f"{crops.num_local} and {config.optim.batch_size}")
        sizes = {"--scfs.out-dim": options.out_dim, "--scfs.hidden-dim": options.hidden_dim,
                 "--scfs.bottleneck-dim": options.bottleneck_dim, "--scfs.layer-out-dim": options.layer_out_dim,
                 "--scfs.layer-hidden-dim": options.layer_hidden_dim,
                 "--scfs.layer-bottleneck-dim": options.layer_bottleneck_dim}
        for flag, value in sizes.items():
            if value < 1:
                raise ConfigError(f"{flag} must be positive, got {value}")
        temperatures = (options.student_temperature, options.teacher_temperature, options.warmup_teacher_temperature)
        if min(temperatures) <= 0:
            raise ConfigError(f"--scfs.student-temperature, --scfs.teacher-temperature and "
                              f"--scfs.warmup-teacher-temperature must be positive, got {temperatures}")
        if not (0 <= options.momentum <= 1 and 0 <= options.center_momentum <= 1):
            raise ConfigError(f"--scfs.momentum and --scfs.center-momentum must lie in [0, 1], got "
                              f"{options.momentum} and {options.center_momentum}")
        counts = (options.warmup_teacher_temperature_epochs, options.freeze_last_layer_epochs, options.search_weight)
        if min(counts) < 0:
            raise ConfigError(f"--scfs.warmup-teacher-temperature-epochs, --scfs.freeze-last-layer-epochs and "
                              f"--scfs.search-weight must be >= 0, got {counts}")
        return config

    def view_specs(self) -> list[CropSpec]:
        return dino_view_specs(self.config.crops)

    def build_model(self) -> ScfsModel:
        return ScfsModel(build_trunk(self.config.model.backbone), self.options)

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        """The exported network's DINO and stage heads."""
        return {k: v for k, v in model.exported.state_dict().items() if not k.startswith("trunk.")}

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        scfs: ScfsModel = extract_model_from_parallel(model)
        options, seen = self.options, int(scfs.batches_seen)
        total = self.schedule_length()  # the run's batches: also makes run_batches known below
        epoch = self.run_batches.epoch(seen)
        if scfs.training and seen > 0:
            scfs.update_teacher(cosine_momentum(options.momentum, seen - 1, total))
        num_global = self.config.crops.num_global
        out: ScfsOutputs = model(batch.crops[:num_global], batch.crops[num_global:],
                                 freeze_last_layer=epoch < options.freeze_last_layer_epochs)
        temperature = teacher_temperature(epoch, options.warmup_teacher_temperature, options.teacher_temperature,
                                          options.warmup_teacher_temperature_epochs)
        num_local = len(batch.crops) - num_global
        student = [*out.student_global.dino.chunk(num_global), *out.student_local.dino.chunk(num_local)]
        dino = scfs.dino_loss(student, out.teacher_global.dino.chunk(num_global), temperature)
        total, terms = dino, {"loss_dino": dino.detach()}
        for index, name in enumerate(STAGE_NAMES):
            global_loss = scfs.stage_losses[index](out.student_global.stages[index].chunk(num_global),
                                                   out.teacher_global.stages[index].chunk(num_global), temperature)
            local_loss = local_search_loss(out.student_local.stages[index].chunk(num_local),
                                           out.targets[index].chunk(num_local), temperature,
                                           options.student_temperature)
            total = total + options.search_weight * (global_loss + local_loss)
            terms.update({f"loss_{name}_global": global_loss.detach(), f"loss_{name}_local": local_loss.detach()})
        if scfs.training:
            scfs.batches_seen += 1
        return LossOutput(total, terms)
