"""DenseSiam backbone pretraining (Zhang et al., "Dense Siamese Network for Dense Unsupervised Learning",
ECCV 2022), the detection-pretraining variant: SimSiam on the cells and regions two views share.

Two SimSiam views of each image go through the same network (no momentum encoder, no queue, no negative
pixels). On the trunk's last feature map a 1x1-conv projector gives ``K`` channels per cell. Each view's
features and projection are RoIAligned over the part of the image both views show (``overlap_boxes``) to
one ``S x S`` grid, mirrored back when the view was flipped, so cell ``(i, j)`` of both grids shows the
same point of the image. Then, symmetrised over the two views:

- PixSim: the predictor (1x1 convs) on one view's aligned projection against the other view's aligned
  projection, stop-gradient: negative cosine per cell (``--densesiam.pixel-loss cosine``) or, as the
  released segmentation code, the soft cross-entropy ``-softmax(z) . log_softmax(p)`` (``cross-entropy``).
- RegionSim: the softmax of the aligned projection over its ``K`` channels gives ``K`` soft masks; each
  pools one region embedding from the aligned features, which a region projector and predictor (MLPs)
  map to vectors compared by InfoNCE (T = 0.1): region ``k`` of one view against the ``K`` regions of the
  other view of the same image, positive = the same ``k``. Gradient flows into both sides (as released).

Total loss = ``pixel_weight * PixSim + region_weight * RegionSim``. Released defaults are taken from
``densesiam/models/architectures/densesiam.py`` and its COCO config (ZwwWayne/DenseSiam): ``K`` = 27,
projector 2 x (conv-BN-ReLU, width 128) -> conv to ``K`` -> BN without affine, predictor ``K`` -> 128
(BN, ReLU) -> ``K``, region projector 2 x (linear-BN-ReLU) -> linear -> BN without affine and region
predictor 2 layers, all width 128, T = 0.1, weights 1 and 0.1, region embeddings summed (not averaged)
under the masks. The hidden layers of the dense heads and of the region predictor carry a bias the release
omits: the BatchNorm right after cancels it, so outputs are unchanged (the golden test pins this).

What follows the paper, not the release (the release is the unsupervised-segmentation variant):

- Correspondence by RoIAlign of the overlap box of the two crops (the release crops and flips one view's
  image and the other view's feature map with a replayed "equivariant" pipeline instead).
- The trunk's last feature map (C5) instead of an FPN decoder, and SimSiam's views (two 224 px crops of
  scale (0.2, 1), ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grey 0.2, blur p 0.5, flip) instead of the
  release's 320 px crops of a 640 px centre crop. The grid side ``S`` = 7 is our choice (ResNet-50's C5
  at 224 px; the release has no grid, its two maps are aligned pixel for pixel).
- Negative cosine for PixSim by default; the segmentation-only terms (hard pseudo-label loss, auxiliary
  128-class projector, their 'auto' loss weights) are left out.

Other choices: the projector runs on the whole feature map and its output is aligned (the predictor runs on
the aligned grid); image pairs whose crops do not overlap are left out of both losses (the region heads'
BatchNorm still sees them); RegionSim is on from ``--densesiam.region-start-step`` (the released config
turns it on for the last 2 of its 10 epochs, i.e. weight 0 before); BatchNorm uses each process's batch
(the release converts every BatchNorm to SyncBatchNorm); AdamW from the shared optimiser config instead of
SGD (lr 0.05, momentum 0.9, weight decay 1e-4).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.geometry import overlap_boxes
from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.pooling import roi_align_pool
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.contrastive import negative_cosine
from detr_ssl.losses.densesiam import region_embeddings, region_info_nce, soft_cross_entropy
from detr_ssl.losses.output import LossOutput
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.densesiam import DenseSiamConfig, DenseSiamOptions


class DenseOutputs(NamedTuple):
    """One view's heads on the aligned overlap grid (a tuple, so DDP and Accelerate walk it)."""

    projection: Tensor
    """``(B, K, S, S)`` dense projector output: PixSim's target and the region masks' logits."""
    prediction: Tensor
    """``(B, K, S, S)`` dense predictor output."""
    region_projection: Tensor
    """``(B, K, D)`` region projector output, one row per soft mask."""
    region_prediction: Tensor
    """``(B, K, D)`` region predictor output."""


class DenseSiamHeads(nn.Module):
    """Dense projector and predictor (1x1 convs) and region projector and predictor (MLPs)."""

    def __init__(self, in_dim: int, options: DenseSiamConfig) -> None:
        super().__init__()
        regions, hidden, width = options.num_regions, options.hidden_dim, options.region_dim
        self.projector = mlp(in_dim, hidden, regions, num_layers=3, norm="bn", final_norm=True, conv=True)
        self.predictor = mlp(regions, hidden, regions, norm="bn", conv=True)
        self.region_projector = mlp(in_dim, width, width, num_layers=3, norm="bn", final_norm=True, bias=False)
        self.region_predictor = mlp(width, width, width, norm="bn")
        self.pooling = options.region_pooling

    def forward(self, features: Tensor, projection: Tensor) -> DenseOutputs:
        """``features`` ``(B, C, S, S)`` and their ``projection`` ``(B, K, S, S)``, both on the aligned grid."""
        regions = region_embeddings(features, projection, self.pooling)
        region_projection = self.region_projector(regions.flatten(0, 1))
        region_prediction = self.region_predictor(region_projection)
        shape = (*regions.shape[:2], -1)
        return DenseOutputs(projection, self.predictor(projection), region_projection.view(shape),
                            region_prediction.view(shape))


def align_overlap(maps: Tensor, boxes: Tensor, flipped: Tensor, view_size: tuple[int, int], grid: int) -> Tensor:
    """``(B, C, grid, grid)``: ``maps`` of views of ``view_size`` RoIAligned over ``boxes`` (view pixels),
    mirrored left-right where the view was flipped, so column ``j`` shows the same image x in every view."""
    pooled = roi_align_pool(maps, boxes, grid, view_size)
    return torch.where(flipped.view(-1, 1, 1, 1), pooled.flip(-1), pooled)


class DenseSiamModel(nn.Module):
    """The trunk and DenseSiam's heads, shared by both views; ``batches_seen`` survives a resume."""

    def __init__(self, trunk: nn.Module, options: DenseSiamConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = DenseSiamHeads(trunk.num_features, options)
        self.grid_size = options.grid_size
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def encode(self, images: Tensor, overlap: Tensor, flipped: Tensor) -> DenseOutputs:
        """One view: trunk and projector on the whole view, then both aligned over ``overlap`` (view pixels)."""
        features = self.trunk.forward_features(images)
        stacked = torch.cat((features, self.heads.projector(features)), dim=1)
        aligned = align_overlap(stacked, overlap, flipped, (images.shape[-2], images.shape[-1]), self.grid_size)
        return self.heads(*aligned.split([features.shape[1], stacked.shape[1] - features.shape[1]], dim=1))

    def forward(self, images: tuple[Tensor, Tensor], overlaps: tuple[Tensor, Tensor],
                flipped: tuple[Tensor, Tensor]) -> tuple[DenseOutputs, DenseOutputs]:
        first, second = (self.encode(*view) for view in zip(images, overlaps, flipped))
        return first, second


def similarity_losses(first: DenseOutputs, second: DenseOutputs, options: DenseSiamConfig) -> tuple[Tensor, Tensor]:
    """(PixSim, RegionSim), each the mean of its two directions (view 1 predicts view 2 and back)."""
    if options.pixel_loss == "cosine":
        similarity = partial(negative_cosine, dim=1)
    else:
        similarity = soft_cross_entropy
    pixel = 0.5 * (similarity(first.prediction, second.projection.detach())
                   + similarity(second.prediction, first.projection.detach()))
    temperature = options.temperature
    region = 0.5 * (region_info_nce(first.region_prediction, second.region_projection, temperature)
                    + region_info_nce(second.region_prediction, first.region_projection, temperature))
    return pixel, region


def view_overlaps(batch: Views) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor]:
    """The two views' overlap box, each in its own view's pixels, their flips, and ``(B,)`` whether the two
    crops overlap at all."""
    if len(batch.geometry) < 2:
        raise ValueError("DenseSiam aligns the views by where they came from: the batch has no view geometry")
    (first, second), (crop_first, crop_second) = batch.geometry[:2], batch.crops[:2]
    box_first, box_second, valid = overlap_boxes(first.boxes, first.flipped, tuple(crop_first.shape[-2:]),
                                                 second.boxes, second.flipped, tuple(crop_second.shape[-2:]))
    return (box_first, box_second), (first.flipped, second.flipped), valid


@register_task("densesiam")
class DenseSiamTask(DenseSiamOptions, BackbonePretextTask):
    two_views_only = True

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        options = config.densesiam
        if options.num_regions < 2:
            raise ConfigError(f"--densesiam.num-regions must be at least 2 (RegionSim contrasts regions), "
                              f"got {options.num_regions}")
        if options.grid_size < 1:
            raise ConfigError(f"--densesiam.grid-size must be positive, got {options.grid_size}")
        if options.temperature <= 0:
            raise ConfigError(f"--densesiam.temperature must be positive, got {options.temperature}")
        return config

    def build_model(self) -> DenseSiamModel:
        return DenseSiamModel(build_trunk(self.config.model.backbone), self.options)

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        return dict(model.heads.state_dict())

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        densesiam: DenseSiamModel = extract_model_from_parallel(model)
        overlaps, flipped, valid = view_overlaps(batch)
        outputs = model(tuple(batch.crops[:2]), overlaps, flipped)
        if bool(valid.any()):  # pairs whose crops do not overlap have nothing to compare
            pixel, region = similarity_losses(*(DenseOutputs(*(t[valid] for t in view)) for view in outputs),
                                              self.options)
        else:  # a zero still connected to every head, so every parameter gets a (zero) gradient
            pixel = region = sum(t.sum() for view in outputs for t in view) * 0.0
        started = bool(densesiam.batches_seen >= self.options.region_start_step)
        total = self.options.pixel_weight * pixel + (self.options.region_weight if started else 0.0) * region
        if densesiam.training:
            densesiam.batches_seen += 1
        return LossOutput(total, {"loss_pixel": pixel.detach(), "loss_region": region.detach()})
