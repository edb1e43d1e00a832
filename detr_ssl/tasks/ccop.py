"""CCOP backbone + pyramid pretraining (Yang et al., "Contrastive Object-level Pre-training with Spatial Noise
Curriculum Learning", arXiv 2111.13651).

MoCo v2 with two more objectives on object proposals. Two views of each image: the first goes through the
query encoder, the second through the key encoder (a momentum copy, no gradient). Each encoder is the ResNet
trunk, the detector's feature pyramid (:mod:`detr_ssl.blocks.pyramid`: C3-C5 through ``input_proj`` plus the
extra stride-2 levels) and two heads (Linear -> Dropout -> ReLU -> Linear):

- image level: average-pooled C5 -> 128-d, InfoNCE (T 0.2) against a queue of earlier keys;
- object level: every selective-search proposal both views show is RoIAligned (7x7) from the pyramid level
  its size selects, flattened and projected to 128-d. The key box gets 10 jittered copies (plus itself);
  among the copies whose IoU with it reaches the curriculum's threshold, the one *least* similar to the
  query box is the positive, against a queue of earlier positives (InfoNCE, T 0.2). The curriculum moves
  linearly over the run: IoU threshold 0.8 -> 0.4, centre jitter 0.15 -> 0.6, log-size jitter 0.35 -> 1.4;
- intra-image triplet: each key box must be closer (by margin 0.4) to its own query box than to any query
  box of the same image overlapping it with IoU below 0.05.

Loss = image + object + triplet (weights 1/1/1). The export holds the trunk and the pyramid's ``input_proj``
levels, which a fine-tuned Deformable DETR loads. Queues, their pointers and the curriculum's step count are
buffers, so a checkpoint resumes them; keys from every process are enqueued, so all processes share the
queues.

Choices and known differences from the released code (github.com/ChenhongyiYang/CCOP at 956b952,
``openselfsup/models/ccop.py``, ``configs/selfsup/ccop/r50_d2.py``, ``openselfsup/datasets/contrastive_boxes.py``,
``tools/selective_search.py``):

- The pyramid is the detector's ``input_proj`` (1x1 conv + GroupNorm on C3-C5, 3x3 stride-2 levels above),
  ``--model.hidden-dim`` channels, ``--model.num-feature-levels`` levels; the release trains a detectron2
  FPN (P2-P5, top-down path, BatchNorm, 256 channels) that fine-tuning then discards.
- Level assignment: the release pools boxes of size ``sqrt(area)`` up to 48, 96, 192 px from P2, P3, P4
  (strides 4, 8, 16) and larger ones from P5, i.e. 12 cells of the level's stride. We apply that rule to
  our strides (``--ccop.level-cells`` 12): the shallowest level whose stride x 12 is at least the box's size,
  the deepest for larger ones. With 224 px views this is the released assignment for every box above
  48 px; smaller ones go to stride 8 (there is no stride-4 level), and the stride-64 level is reached by no
  box inside a 224 px view (the release also leaves its top FPN level without RoIs). The release sends boxes
  larger than 224 px to P2, which cannot happen in its 224 px views.
- Proposals: the release runs selective search (fast) on the full-size image (OpenCV's BGR order), drops
  boxes with aspect ratio outside (1/3, 3) or side ``sqrt(w h)`` <= 20 px, applies NMS 0.5 with random scores
  and keeps 50 (its loader caps at 100). We read the project's proposal cache (128 px search, first
  ``--proposal-top-k`` 100 boxes) and apply the same shape filters and NMS in selective search's order.
- Views as released: two 224 px crops of 10%-100% of the image, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
  greyscale p 0.2, Gaussian blur p 0.5, flip p 0.5; colours through PIL rather than kornia (the blur's
  kernel is not cut at 7x7). A crop is redrawn (here: the whole view) up to 10 times until it keeps a box.
  Boxes are clipped to ``[0, size]`` (released: ``size - 1``); view 0 is always the query (the release
  swaps the views at random, which changes nothing in distribution).
- The triplet loss's key embeddings are those of the unjittered candidate; the release runs the key head
  a second time on the same boxes, which differs only by that pass's dropout draw.
- A batch without proposal pairs or triplet pairs gives 0 for that term (released: NaN).
- Both queues are ring buffers. The release writes the object keys only up to the end of its queue and
  drops the rest of the batch (its pointer then restarts at 0).
- No shuffling BN (the release shuffles the key batch across GPUs): per-process batch statistics. The
  momentum update (0.999, constant, as released) moves parameters only and runs at the start of every
  training batch (once per batch with gradient accumulation).
- AdamW from the shared optimiser config instead of SGD (lr 0.3, momentum 0.9, weight decay 1e-4, batch
  256, 800 epochs, cosine with 10 warm-up epochs). The curriculum's length is the run's batches per process
  (``--ccop.curriculum-steps`` fixes it), as the release's ``total_step`` = epochs x iterations per epoch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn
from torch.utils.data import Dataset

from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.momentum import ema_update_, momentum_copy
from detr_ssl.blocks.pooling import multilevel_roi_align
from detr_ssl.blocks.pyramid import DetectorPyramid, build_pyramid, trunk_stages
from detr_ssl.blocks.queue import KeyQueue
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.multicrop import CropSpec
from detr_ssl.errors import ConfigError
from detr_ssl.losses.ccop import (
    JitterSchedule,
    assign_levels,
    curriculum,
    hardest_positive,
    intra_image_triplet,
    jitter_per_image,
    triplet_negatives,
)
from detr_ssl.losses.contrastive import info_nce
from detr_ssl.losses.output import LossOutput
from detr_ssl.proposals.options import proposal_dataset
from detr_ssl.proposals.views import (
    BoxPairs,
    ProposalFilter,
    ProposalViewDataset,
    ProposalViews,
    box_pairs,
    collate_proposal_views,
)
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BYOL_JITTER, BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.ccop import CcopConfig, CcopOptions

#: The released views' colour jitter (brightness, contrast, saturation, hue), p 0.8 on both views.
CCOP_JITTER = BYOL_JITTER


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """``Linear -> Dropout -> ReLU -> Linear`` (released LinearNormNeck, one hidden layer, no norm), weights
    drawn from N(0, 0.01) and biases zero as the release initialises them."""
    layers = list(mlp(in_dim, hidden_dim, out_dim))
    head = nn.Sequential(layers[0], nn.Dropout(dropout), *layers[1:])
    for layer in head:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
    return head


class RoiEmbedding(nn.Module):
    """Boxes -> ``(M, D)`` L2-normalised embeddings: RoIAlign from the level their size selects
    (:func:`~detr_ssl.losses.ccop.assign_levels`), flattened, through the object head."""

    def __init__(self, channels: int, strides: tuple[int, ...], options: CcopConfig) -> None:
        super().__init__()
        self.strides = strides
        self.size = options.roi_size
        self.level_cells = options.level_cells
        self.head = projection_head(channels * self.size**2, options.hidden_dim, options.feature_dim,
                                    options.head_dropout)

    def forward(self, levels: list[Tensor], boxes: Tensor, image_index: Tensor, view_size: tuple[int, int]) -> Tensor:
        level = assign_levels(boxes, self.strides, self.level_cells)
        pooled = multilevel_roi_align(levels, boxes, image_index, level, view_size, self.size)
        return F.normalize(self.head(pooled.flatten(1)), dim=1)


class Encoded(NamedTuple):
    """One encoder's outputs for a batch of views."""

    embedding: Tensor
    """``(B, D)`` L2-normalised image embedding."""
    levels: list[Tensor]
    """The pyramid's maps, shallowest first."""


class CcopEncoder(nn.Module):
    """Trunk + detector pyramid (``width`` channels a level) + image head on C5 + object head on the levels."""

    def __init__(self, trunk: nn.Module, pyramid: DetectorPyramid, options: CcopConfig, width: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.pyramid = pyramid
        self.image_head = projection_head(trunk.num_features, options.hidden_dim, options.feature_dim,
                                          options.head_dropout)
        self.rois = RoiEmbedding(width, pyramid.strides, options)

    def forward(self, images: Tensor) -> Encoded:
        stages = trunk_stages(self.trunk, images)
        embedding = F.normalize(self.image_head(stages[-1].mean(dim=(2, 3))), dim=1)
        return Encoded(embedding, self.pyramid(stages))


class CcopOutput(NamedTuple):
    """One batch through both encoders (a tuple, so DDP and Accelerate walk it); embeddings L2-normalised."""

    image_query: Tensor
    """``(B, D)`` query encoder, view 0."""
    image_key: Tensor
    """``(B, D)`` key encoder, view 1 (no gradient)."""
    roi_query: Tensor
    """``(M, D)`` query encoder, the kept boxes in view 0 (image by image)."""
    candidates: Tensor
    """``(M, J + 1, D)`` key encoder, each key box's jittered copies and the box itself (last)."""
    valid: Tensor
    """``(M, J + 1)`` bool: candidates whose IoU with the key box reaches the curriculum's threshold."""


class CcopModel(nn.Module):
    """Query encoder, its momentum copy (the key encoder), the image and object queues and the count of
    training batches (the curriculum's clock)."""

    steps: Tensor

    def __init__(self, trunk: nn.Module, options: CcopConfig, width: int, num_levels: int) -> None:
        super().__init__()
        self.encoder = CcopEncoder(trunk, build_pyramid(trunk, width, num_levels), options, width)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.image_queue = KeyQueue(options.image_queue_length, options.feature_dim)
        self.roi_queue = KeyQueue(options.roi_queue_length, options.feature_dim)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def trunk(self) -> nn.Module:
        """The query encoder's trunk: what the export writes."""
        return self.encoder.trunk

    @property
    def pyramid(self) -> DetectorPyramid:
        """The query encoder's pyramid: the export writes its ``input_proj`` levels."""
        return self.encoder.pyramid

    def forward(self, query_images: Tensor, key_images: Tensor, pairs: BoxPairs, num_jitter: int,
                schedule: JitterSchedule) -> CcopOutput:
        query = self.encoder(query_images)
        image_index = pairs.keep.nonzero()[:, 0]
        roi_query = self.encoder.rois(query.levels, pairs.query[pairs.keep], image_index,
                                      tuple(query_images.shape[-2:]))
        with torch.no_grad():
            key = self.momentum_encoder(key_images)
            size = tuple(key_images.shape[-2:])
            boxes, valid = jitter_per_image(pairs.key, pairs.keep, num_jitter, schedule, size)
            candidates = self.momentum_encoder.rois(key.levels, boxes.flatten(0, 1),
                                                    image_index.repeat_interleave(num_jitter + 1), size)
        return CcopOutput(query.embedding, key.embedding, roi_query, candidates.unflatten(0, valid.shape), valid)


def _padded(rows: Tensor, keep: Tensor) -> Tensor:
    """``(B, K, D)``: the ``(M, D)`` rows of the True entries of ``keep`` (row-major), zeros elsewhere."""
    padded = rows.new_zeros(*keep.shape, rows.shape[-1])
    padded[keep] = rows
    return padded


@register_task("ccop")
class CcopTask(CcopOptions, BackbonePretextTask):
    collate_fn = staticmethod(collate_proposal_views)
    two_views_only = True
    fixed_jitter = CCOP_JITTER

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        options = config.ccop
        if min(options.image_queue_length, options.roi_queue_length) < 1:
            raise ConfigError(f"--ccop.image-queue-length and --ccop.roi-queue-length must be positive, got "
                              f"{options.image_queue_length} and {options.roi_queue_length}")
        if options.num_jitter < 0 or options.roi_size < 1 or options.level_cells <= 0:
            raise ConfigError(f"need --ccop.num-jitter >= 0, --ccop.roi-size >= 1 and --ccop.level-cells > 0; got "
                              f"{options.num_jitter}, {options.roi_size} and {options.level_cells}")
        if not all(0 <= value <= 1 for value in options.iou_thresholds):
            raise ConfigError(f"--ccop.iou-thresholds must lie in [0, 1], got {options.iou_thresholds}")
        if min(*options.xy_jitter, *options.wh_jitter) < 0:
            raise ConfigError(f"--ccop.xy-jitter and --ccop.wh-jitter must be >= 0, got {options.xy_jitter} and "
                              f"{options.wh_jitter}")
        if min(options.image_temperature, options.roi_temperature) <= 0 or not 0 <= options.head_dropout < 1:
            raise ConfigError(f"need --ccop.image-temperature and --ccop.roi-temperature > 0 and --ccop.head-dropout "
                              f"in [0, 1); got {options.image_temperature}, {options.roi_temperature} and "
                              f"{options.head_dropout}")
        if not 0 <= options.part_threshold < 1 or options.max_view_tries < 1 or options.curriculum_steps < 0:
            raise ConfigError(f"need --ccop.part-threshold in [0, 1), --ccop.max-view-tries >= 1 and "
                              f"--ccop.curriculum-steps >= 0; got {options.part_threshold}, "
                              f"{options.max_view_tries} and {options.curriculum_steps}")
        return config

    @classmethod
    def find_unused_parameters(cls, config: PretrainConfig) -> bool:
        """A batch may leave a pyramid level (or, without proposal pairs, the object head) without gradient."""
        return True

    def view_specs(self) -> list[CropSpec]:
        """The released views: the same colour jitter, greyscale and blur (p 0.5) on both."""
        crops = self.config.crops
        return [CropSpec(crops.global_size, crops.global_scale, jitter=CCOP_JITTER, blur_probability=0.5)] * 2

    def build_dataset(self, images: ImageFolderDataset, transforms=None) -> Dataset:
        """The two views with each image's filtered proposals; also fixes the curriculum's length."""
        options = self.options
        proposals = proposal_dataset(self.config.proposals, self.config.run.output_dir, images, None)
        rules = ProposalFilter(options.min_proposal_size, options.max_proposal_aspect, options.proposal_nms)
        dataset = ProposalViewDataset(proposals, self.view_specs(), rules, options.part_threshold,
                                      options.max_view_tries)
        self.count_run_batches(len(dataset))
        return dataset

    def build_model(self) -> CcopModel:
        model = self.config.model
        return CcopModel(build_trunk(model.backbone), self.options, model.hidden_dim, model.num_feature_levels)

    def schedule(self, step: int) -> JitterSchedule:
        """The curriculum at training batch ``step`` (counted from 1, as released; held at its end)."""
        options = self.options
        progress = min(step / self.schedule_length(options.curriculum_steps, "--ccop.curriculum-steps"), 1.0)
        return curriculum(progress, options.iou_thresholds, options.xy_jitter, options.wh_jitter)

    def compute_loss(self, model: nn.Module, batch: ProposalViews) -> LossOutput:
        ccop: CcopModel = extract_model_from_parallel(model)
        options = self.options
        if ccop.training:
            ema_update_(ccop.momentum_encoder, ccop.encoder, options.momentum, copy_buffers=False)
            ccop.steps += 1
        pairs = box_pairs(batch, options.part_threshold, options.min_box_area)
        out: CcopOutput = model(batch.crops[0], batch.crops[1], pairs, options.num_jitter,
                                self.schedule(int(ccop.steps)))
        return self.contrast(ccop, out, pairs)

    def contrast(self, ccop: CcopModel, out: CcopOutput, pairs: BoxPairs) -> LossOutput:
        """The three losses of one batch's embeddings; in training, then enqueues the image keys and the
        chosen object positives."""
        options = self.options
        image_loss = info_nce(out.image_query, out.image_key, ccop.image_queue.snapshot(), options.image_temperature)
        positive, _ = hardest_positive(out.roi_query, out.candidates, out.valid)
        if len(positive):
            roi_loss = info_nce(out.roi_query, positive, ccop.roi_queue.snapshot(), options.roi_temperature)
        else:
            roi_loss = out.roi_query.sum() * 0
        negatives = triplet_negatives(pairs.key, pairs.keep, options.triplet_iou)
        triplet = intra_image_triplet(_padded(out.roi_query, pairs.keep), _padded(out.candidates[:, -1], pairs.keep),
                                      negatives, options.triplet_margin)
        total = options.image_weight * image_loss + options.roi_weight * roi_loss + options.triplet_weight * triplet
        if ccop.training:
            ccop.image_queue.push(out.image_key)
            ccop.roi_queue.push(positive)
        terms = {"loss_image": image_loss.detach(), "loss_object": roi_loss.detach(), "loss_triplet": triplet.detach(),
                 "object_pairs": pairs.keep.sum(dim=1).float().mean()}
        return LossOutput(total, terms)
