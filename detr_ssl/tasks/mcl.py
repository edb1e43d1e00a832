"""MCL backbone and pyramid pretraining (Guo et al., "Multi-Level Contrastive Learning for Dense Prediction
Task", arXiv 2304.02010).

Montage pretext: each view of the batch is also shrunk by r (2, 4) and tiled into r x r montages of the
original size (:mod:`detr_ssl.blocks.montage`, sub-images drawn at random from the batch). The full views and
the montages go through the online encoder as one batch per view side: ResNet trunk, the detector's pyramid
(``input_proj``: C3-C5 projections and the extra levels, trained and exported here), and a head that cuts
each level into the sub-images' cell blocks, runs 3x3 conv -> BN -> ReLU on every block, averages it and
projects it (Linear -> BN -> ReLU -> Linear -> BN). Scale r is read from the level of stride 32 / r, so a
sub-image has as many cells there as the full view has at stride 32. A per-scale predictor
(Linear -> BN -> ReLU -> Linear) follows, and each L2-normalised prediction is classified among the
momentum encoder's embeddings of the *full* other view of every image of every process (gathered): the
label is the image the sub-image shows. Loss = sum over scales of ``w_r * 2T * (CE_1 + CE_2)`` (T = 1), both
view sides symmetric, weights 1/2, 1/4, 1/8. The target encoder follows the online one (trunk, pyramid,
head) with BYOL's momentum, 0.99 rising along a half cosine to 1.

Scales and pyramid levels: the release pairs scales 1, 2, 4, 8 with the levels P5, P4, P3, P2 of an FPN
(strides 32, 16, 8, 4). The detector's pyramid starts at stride 8 (C3), so scale 8 (stride 4) has no level
and the default is scales 1, 2, 4 with their released weights (1/2, 1/4, 1/8; scale 8's 1/8 is dropped, not
redistributed). This is the same for the demo's 3 levels (strides 8, 16, 32) and ResNet-50's 4 (8 to 64);
the extra stride-64 level reads no scale and keeps its initialisation (``find_unused_parameters`` tells DDP).
``--mcl.scales`` picks a subset; a scale whose stride the pyramid lacks is refused.

Choices and known differences from the released code (github.com/GuoQiushan/MCL at 1912aa9,
``configs/selfsup/MCL/MCL.py``, ``openselfsup/models/mcl.py``):

- The pyramid is the detector's ``input_proj`` (1x1 conv + GroupNorm on C3-C5, 3x3/s2 extra levels) instead of
  the released FPN (lateral and top-down paths, BatchNorm, levels P2-P5 of 256 channels); its width is
  ``--model.hidden-dim`` (256 for ResNet-50, as released; 64 on the demo).
- The head runs on each scale's own montages at its own level only. The release runs it on every level of
  every image of the concatenated batch and keeps the matching slice, so its BatchNorm statistics also see the
  other scales' images at that level (and the target head's, the montages at stride 32); ours see the blocks
  that are used. The trunk and pyramid do run on the concatenated batch (full views + montages) in both
  encoders, as released, so the trunk's batch statistics match.
- The head's block is ``S / 32`` cells for views of ``S`` px (7 at 224, the release's fixed ``avg_size``).
- Views: a pair of BYOL views per scale (``--mcl.separate-views``, the release's 8 pipelines for 4 scales):
  scale i montages views i (first kind) and k + i (second kind) of k scales; the targets are views 0 and k.
- Montages per scale: ``ceil(B / r^2)``, so a batch that r^2 does not divide fills the last montage's spare
  slots with its lowest-numbered images again (the release sets the counts by hand in its config: ``B / r^2``
  at scales 2 and 4, ``2 B / 64`` at scale 8).
- Momentum: the release's BYOLHook moves the target after training iteration k with
  ``m_k = 1 - (1 - 0.99) (cos(pi k / K) + 1) / 2``; here the same update runs at the start of iteration k + 1
  (so one update is skipped after the last step), parameters only (the target keeps its own BatchNorm
  statistics). K is the number of batches the run trains (``--mcl.momentum-steps`` fixes it), a buffer-held
  counter resumes it.
- Per-process BatchNorm instead of SyncBatchNorm; AdamW from the shared optimiser config instead of LARS
  (lr 1.0 per 256 images, weight decay 1e-5, cosine with warm-up, fp16, 100 epochs of batch 4096).
- The heads are initialised as released (conv Kaiming-normal fan-out, head Linear Kaiming-normal fan-in,
  predictor Linear N(0, 0.01), zero biases); the pyramid keeps the detector's Xavier initialisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.momentum import cosine_momentum, ema_update_, momentum_copy
from detr_ssl.blocks.montage import (
    FULL_VIEW_STRIDE,
    ScaleLevel,
    build_montages,
    draw_montage_labels,
    scale_levels,
    untile,
)
from detr_ssl.blocks.pyramid import DetectorPyramid, build_pyramid, pyramid_strides, trunk_stages
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import CropSpec, Views
from detr_ssl.distributed import all_gather_cat, rank
from detr_ssl.errors import ConfigError
from detr_ssl.losses.output import LossOutput
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk, byol_view_specs
from detr_ssl.tasks.options.mcl import MclConfig, MclOptions


def conv_block(channels: int) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU: mmcv's ConvModule with a BN config, as the released head has."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True))


class CellBlockHead(nn.Module):
    """The released ``DetConvGpNonLinearHead``: a level map of montages of r x r sub-images -> one embedding
    per sub-image, in montage layout order. Each sub-image's cell block goes through the conv blocks on its own
    (zero padding at its borders), is averaged, and projected."""

    def __init__(self, channels: int, options: MclConfig) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(conv_block(channels) for _ in range(options.head_convs)))
        self.projector = mlp(channels, options.head_hidden_dim, options.feature_dim, norm="bn", final_norm=True)

    def forward(self, level_map: Tensor, ratio: int) -> Tensor:
        """``(M, C, H, W)`` -> ``(M * ratio**2, D)``."""
        return self.projector(self.convs(untile(level_map, ratio)).mean(dim=(2, 3)))


class MclEncoder(nn.Module):
    """Trunk + detector pyramid + cell-block head (the released ``encoder_q``: backbone, FPN, neck)."""

    def __init__(self, trunk: nn.Module, pyramid: DetectorPyramid, channels: int, options: MclConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.pyramid = pyramid
        self.head = CellBlockHead(channels, options)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(N, 3, S, S)`` -> the pyramid's levels ``(N, C, S / stride, S / stride)``, shallowest first."""
        return self.pyramid(trunk_stages(self.trunk, images))


class MclOutputs(NamedTuple):
    """One batch through both encoders (tuples, so DDP and Accelerate walk them); embeddings L2-normalised."""

    predictions: tuple[list[Tensor], list[Tensor]]
    """Per view side, per scale: ``(M_i * r_i**2, D)`` online predictions of the sub-images (full views at scale 1)."""
    targets: tuple[Tensor, Tensor]
    """Per view side: ``(B, D)`` the target encoder's embeddings of the full views (no gradient)."""


class MclModel(nn.Module):
    """Online encoder, one predictor per scale, the momentum target encoder, and the count of training
    batches seen (a buffer, so a resumed run continues the momentum schedule)."""

    def __init__(self, trunk: nn.Module, options: MclConfig, hidden_dim: int, num_levels: int) -> None:
        super().__init__()
        pyramid = build_pyramid(trunk, hidden_dim, num_levels)
        self.scales: list[ScaleLevel] = scale_levels(options.scales, options.scale_weights, pyramid.strides)
        self.encoder = MclEncoder(trunk, pyramid, hidden_dim, options)
        width = options.feature_dim
        self.predictors = nn.ModuleList(mlp(width, options.predictor_hidden_dim, width, norm="bn")
                                        for _ in self.scales)
        init_heads_as_released_(self.encoder.head, self.predictors)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    @property
    def trunk(self) -> nn.Module:
        """The online trunk: what the export writes."""
        return self.encoder.trunk

    @property
    def pyramid(self) -> DetectorPyramid:
        """The online pyramid: the export writes its ``input_proj``."""
        return self.encoder.pyramid

    def _side(self, images: Tensor, counts: list[int]) -> tuple[list[Tensor], Tensor]:
        """One view side: its full views and montages concatenated (``counts`` images per scale)."""
        levels = self.encoder(images)
        predictions, start = [], 0
        for scale, count, predictor in zip(self.scales, counts, self.predictors, strict=True):
            embedding = self.encoder.head(levels[scale.level][start:start + count], scale.ratio)
            predictions.append(F.normalize(predictor(embedding), dim=1))
            start += count
        with torch.no_grad():
            full_views = self.momentum_encoder(images)[self.scales[0].level][:counts[0]]
            target = F.normalize(self.momentum_encoder.head(full_views, 1), dim=1)
        return predictions, target

    def forward(self, first: Tensor, second: Tensor, counts: list[int]) -> MclOutputs:
        """Each view side through the online encoder, then the target encoder, as its own batch (the release's
        order, so BatchNorm sees one side at a time)."""
        predictions_1, target_1 = self._side(first, counts)
        predictions_2, target_2 = self._side(second, counts)
        return MclOutputs((predictions_1, predictions_2), (target_1, target_2))

    @torch.no_grad()
    def update_target(self, base_momentum: float, total_steps: int) -> None:
        """Called at the start of every training batch: from the second on, moves the target's parameters
        (not its BatchNorm statistics) towards the online ones with the momentum the release uses after the
        previous batch, ``cosine_momentum(base, k, K)`` after batch k; then counts this batch."""
        if int(self.batches_seen) > 0:
            momentum = cosine_momentum(base_momentum, int(self.batches_seen) - 1, total_steps)
            ema_update_(self.momentum_encoder, self.encoder, momentum, copy_buffers=False)
        self.batches_seen += 1


@torch.no_grad()
def init_heads_as_released_(head: CellBlockHead, predictors: nn.ModuleList) -> None:
    """The release's initialisation: the head's convs Kaiming-normal (fan-out, mmcv's ConvModule) and its
    Linear layers Kaiming-normal (fan-in, ``init_linear='kaiming'``), the predictors' Linear layers N(0, 0.01);
    biases zero, BatchNorm weight 1 and bias 0 (PyTorch's defaults)."""
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    for module in predictors.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def montage_info_nce(predictions: Tensor, targets: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """The released head's loss: ``2T`` x the mean cross-entropy of ``predictions @ targets.T / T`` with the
    positive at column ``labels`` (each sub-image's own image among all gathered targets, the others its
    negatives). Not :func:`~detr_ssl.losses.contrastive.info_nce`: the positive is one of the shared targets,
    not an extra column."""
    return F.cross_entropy(predictions @ targets.T / temperature, labels) * (2 * temperature)


@register_task("mcl")
class MclTask(MclOptions, BackbonePretextTask):
    two_views_only = byol_views = True

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        options, crops = config.mcl, config.crops
        if not options.scales or options.scales[0] != 1 or list(options.scales) != sorted(set(options.scales)):
            raise ConfigError(f"--mcl.scales must start with 1 (the full views, every scale's target) and "
                              f"increase; got {' '.join(map(str, options.scales))}")
        levels = config.model.num_feature_levels
        try:
            scale_levels(options.scales, options.scale_weights, pyramid_strides(levels))
        except ValueError as error:
            raise ConfigError(f"--mcl.scales / --mcl.scale-weights with --model.num-feature-levels {levels}: "
                              f"{error}") from None
        if min(options.scale_weights) < 0:
            raise ConfigError(f"--mcl.scale-weights must not be negative, got {options.scale_weights}")
        if crops.global_size % FULL_VIEW_STRIDE:
            raise ConfigError(f"--crops.global-size {crops.global_size} must be a multiple of {FULL_VIEW_STRIDE} "
                              f"(every sub-image covers whole cells of its level)")
        if config.optim.batch_size < 2:
            raise ConfigError(f"--task mcl tells the images of a batch apart; --batch-size "
                              f"{config.optim.batch_size} has one (use at least 2)")
        if options.temperature <= 0 or options.head_convs < 0:
            raise ConfigError(f"--mcl.temperature must be positive and --mcl.head-convs at least 0; got "
                              f"{options.temperature} and {options.head_convs}")
        if not 0 <= options.momentum <= 1 or options.momentum_steps < 0:
            raise ConfigError(f"--mcl.momentum must lie in [0, 1] and --mcl.momentum-steps be at least 0; "
                              f"got {options.momentum} and {options.momentum_steps}")
        return config

    @classmethod
    def find_unused_parameters(cls, config: PretrainConfig) -> bool:
        """Pyramid levels no scale reads (ResNet-50's stride-64 level) get no gradient."""
        return super().find_unused_parameters(config) or len(config.mcl.scales) < config.model.num_feature_levels

    @property
    def pairs(self) -> int:
        """Pairs of views per image: one per scale with ``--mcl.separate-views``, else one."""
        return len(self.options.scales) if self.options.separate_views else 1

    def view_specs(self) -> list[CropSpec]:
        """BYOL's first view ``pairs`` times, then its second ``pairs`` times (the released pipeline order)."""
        first, second = byol_view_specs(self.config.crops)
        return [first] * self.pairs + [second] * self.pairs

    def build_model(self) -> MclModel:
        model = self.config.model
        return MclModel(build_trunk(model.backbone), self.options, model.hidden_dim, model.num_feature_levels)

    def montage_batches(self, batch: Views) -> tuple[list[Tensor], list[list[Tensor]], list[int]]:
        """Per view side, the full views and each scale's montages concatenated, and each sub-image's label
        (its image's index in the batch), per side and scale; and the images per scale. Labels are drawn
        scale by scale, first side then second, with the default generator: the release's order."""
        crops, pairs = batch.crops, self.pairs
        size = len(batch)
        full = torch.arange(size, device=crops[0].device)
        inputs, labels = [[crops[0]], [crops[pairs]]], [[full], [full]]
        for index, ratio in enumerate(self.options.scales[1:], start=1):
            view = index if self.options.separate_views else 0
            for side, images in enumerate((crops[view], crops[pairs + view])):
                drawn = draw_montage_labels(size, ratio, images.device)
                inputs[side].append(build_montages(images, drawn, ratio))
                labels[side].append(drawn)
        counts = [len(part) for part in inputs[0]]
        return [torch.cat(parts) for parts in inputs], labels, counts

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        mcl: MclModel = extract_model_from_parallel(model)
        if mcl.training:
            mcl.update_target(self.options.momentum, self.schedule_length(self.options.momentum_steps,
                                                                          "--mcl.momentum-steps"))
        (first, second), labels, counts = self.montage_batches(batch)
        out: MclOutputs = model(first, second, counts)
        offset = rank() * len(batch)  # this process's images among the gathered targets
        gathered = [all_gather_cat(target) for target in out.targets]
        temperature = self.options.temperature
        total, terms = out.targets[0].new_zeros(()), {}
        for index, scale in enumerate(mcl.scales):
            loss = sum(montage_info_nce(out.predictions[side][index], gathered[1 - side],
                                        labels[side][index] + offset, temperature) for side in (0, 1))
            total = total + scale.weight * loss
            terms[f"loss_scale{scale.ratio}"] = loss.detach()
        return LossOutput(total, terms)
