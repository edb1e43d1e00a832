"""RegionCL-M backbone pretraining (Xu et al., "RegionCL: Can Simple Region Swapping Contribute to
Contrastive Learning?", arXiv 2111.12309): MoCo v2 plus a region loss on cut-and-paste composites.

Two global views of each image: the first goes through the query encoder, the second through the key
encoder (a momentum copy, no gradient). Each encoder is the ResNet trunk plus MoCo v2's head (average pool,
Linear -> ReLU -> Linear). On top of MoCo's instance InfoNCE (query vs. the key of the same image, a queue
of earlier keys as negatives), a box on the C5 grid is cut from the first view of image ``B-1-i`` (the
batch reversed) and pasted into the first view of image ``i``. The query encoder embeds the composite's
two regions, each by the masked average of its C5 features: the canvas (outside the box) must match the
key of image ``i``, the paste the key of its source image, against the queue plus the other region of the
same composite (:func:`detr_ssl.losses.regioncl.region_info_nce`). Loss = instance + region. The queue
and its pointer are buffers; keys from every process are enqueued, so all processes share one queue.

The box, as released: one per batch, width then height drawn uniformly from ``min_box_cells`` to
``max_box_cells`` C5 cells (3 to 5 at 224 px, ``cutMixLower=3, cutMixUpper=6`` exclusive), then its left
and top edges each a pixel drawn uniformly in the view, rounded (half to even) to the nearest grid line and
clamped so the box fits. All draws use torch's default generator, in the released order, so a seed gives
the released box (see the clamping difference below) and every process, seeded alike, the same box.

Choices and known differences from the released code (Annbless/RegionCL, RegionCLM.py):

- Clamping: the release clamps the left/top pixel to ``size - 1 - box`` (one pixel off the grid) and pools
  the C5 cells from ``floor(pixel / 32)``, a whole cell left of/above the cells the paste fills. Here the
  clamp is ``size - box``: the box stays on the grid and the pooled cells are exactly the pasted ones.
- ``head2`` (the region loss head) is used but never built in the release; it is taken to be the same
  ContrastiveHead (temperature 0.2) as the instance loss.
- Pairing is per process, as released: the box of image ``i`` comes from ``B-1-i`` of the same process's
  batch (an odd batch pastes its middle image into itself). With P processes of B images the instance
  loss and the queue equal those of one process with P*B images; the region loss is the mean over
  processes of each one's own.
- No shuffling BN (the release shuffles the key batch across GPUs, DDP only): both encoders normalise
  with their own process's batch statistics, as our DenseCL does.
- The momentum update moves parameters only, as released (the key encoder keeps its own BatchNorm
  statistics); it runs at the start of every training batch (once per batch with gradient accumulation).
- Heads keep PyTorch's default Linear initialisation (the release uses Kaiming-normal, fan-in); AdamW from
  the shared optimiser config instead of SGD (lr 0.15 for batch 1024, cosine, 200 epochs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.momentum import ema_update_, momentum_copy
from detr_ssl.blocks.pooling import masked_average_pool
from detr_ssl.blocks.queue import KeyQueue
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.contrastive import info_nce
from detr_ssl.losses.output import LossOutput
from detr_ssl.losses.regioncl import region_info_nce
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.regioncl import RegionClConfig, RegionClOptions

C5_STRIDE = 32
"""Pixels per C5 cell of every ResNet trunk: the grid the pasted box is aligned to."""


class PasteBox(NamedTuple):
    """The pasted box on the C5 grid, in cells: left column, top row, width, height."""

    x: int
    y: int
    width: int
    height: int

    def pixels(self, stride: int = C5_STRIDE) -> tuple[slice, slice]:
        """(rows, columns) of the box in a view whose cells are ``stride`` pixels."""
        return (slice(self.y * stride, (self.y + self.height) * stride),
                slice(self.x * stride, (self.x + self.width) * stride))

    def mask(self, grid: int, device: torch.device | None = None) -> Tensor:
        """``(grid, grid)`` float mask of the box's C5 cells."""
        mask = torch.zeros(grid, grid, device=device)
        mask[self.pixels(stride=1)] = 1
        return mask


def _draw_start(view_size: int, last: int) -> int:
    """A pixel drawn uniformly in the view, rounded half-to-even to a grid line, at most cell ``last``."""
    pixel = torch.randint(0, view_size, (1,)).float()
    return min(int(torch.round(pixel / C5_STRIDE)), last)


def draw_paste_box(view_size: int, min_cells: int, max_cells: int) -> PasteBox:
    """One box for the batch, drawn with torch's default generator in the release's order (width, height,
    left, top), so the same seed gives the same box as the release wherever its clamp does not apply."""
    grid = view_size // C5_STRIDE
    width = int(torch.randint(min_cells, max_cells + 1, (1,)))
    height = int(torch.randint(min_cells, max_cells + 1, (1,)))
    x = _draw_start(view_size, grid - width)
    y = _draw_start(view_size, grid - height)
    return PasteBox(x, y, width, height)


def paste_sources(batch_size: int, device: torch.device | None = None) -> Tensor:
    """``(B,)`` the image each composite's box is cut from: the batch reversed."""
    return torch.arange(batch_size - 1, -1, -1, device=device)


def paste_reversed(images: Tensor, box: PasteBox) -> Tensor:
    """``(B, 3, S, S)`` composites: each image with ``box`` replaced by the same pixels of its source."""
    rows, columns = box.pixels()
    composite = images.clone()
    composite[:, :, rows, columns] = images[paste_sources(len(images), images.device), :, rows, columns]
    return composite


class RegionClEncoder(nn.Module):
    """Trunk + MoCo v2's projection head, embedding whole images or the two regions of composites."""

    def __init__(self, trunk: nn.Module, options: RegionClConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.projection_head = mlp(trunk.num_features, options.hidden_dim, options.feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, D)`` L2-normalised embeddings of the average-pooled C5 features."""
        return F.normalize(self.projection_head(self.trunk.forward_features(images).mean(dim=(2, 3))), dim=1)

    def regions(self, composites: Tensor, paste_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, D)`` L2-normalised embeddings of the canvas (outside ``paste_mask``, an ``(H, W)`` mask on
        the C5 grid) and of the paste (inside it) of each composite."""
        features = self.trunk.forward_features(composites)
        masks = torch.stack((1 - paste_mask, paste_mask)).to(features.dtype)
        pooled = masked_average_pool(features, masks.expand(len(features), -1, -1, -1))
        embedded = F.normalize(self.projection_head(pooled), dim=-1)
        return embedded[:, 0], embedded[:, 1]


class RegionClOutput(NamedTuple):
    """The embeddings of a batch (a tuple, so DDP and Accelerate walk it); all ``(B, D)``, normalised."""

    query: Tensor
    """Query encoder, first views."""
    canvas: Tensor
    """Query encoder, each composite's own region."""
    paste: Tensor
    """Query encoder, each composite's pasted box (in composite order)."""
    key: Tensor
    """Key encoder, second views (no gradient)."""


class RegionClModel(nn.Module):
    """Query encoder, its momentum copy (the key encoder) and the key queue."""

    def __init__(self, trunk: nn.Module, options: RegionClConfig) -> None:
        super().__init__()
        self.encoder = RegionClEncoder(trunk, options)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.queue = KeyQueue(options.queue_length, options.feature_dim)

    @property
    def trunk(self) -> nn.Module:
        """The query encoder's trunk: what the export writes."""
        return self.encoder.trunk

    def forward(self, query_images: Tensor, composites: Tensor, key_images: Tensor, paste_mask: Tensor
                ) -> RegionClOutput:
        # The query encoder sees the views, then the composites, in two batches as released (BatchNorm
        # statistics are per batch).
        query = self.encoder(query_images)
        canvas, paste = self.encoder.regions(composites, paste_mask)
        with torch.no_grad():
            key = self.momentum_encoder(key_images)
        return RegionClOutput(query, canvas, paste, key)


@register_task("regioncl")
class RegionClTask(RegionClOptions, BackbonePretextTask):
    two_views_only = True

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        crops, options = config.crops, config.regioncl
        if options.queue_length < 1:
            raise ConfigError(f"--regioncl.queue-length must be positive, got {options.queue_length}")
        if config.optim.batch_size < 2:
            raise ConfigError(f"--task regioncl pastes a region of another image of the batch; --batch-size "
                              f"{config.optim.batch_size} has none (use at least 2)")
        if crops.global_size % C5_STRIDE:
            raise ConfigError(f"--crops.global-size {crops.global_size} must be a multiple of {C5_STRIDE} "
                              f"(the pasted box is aligned to the C5 grid)")
        grid = crops.global_size // C5_STRIDE
        if not 1 <= options.min_box_cells <= options.max_box_cells < grid:
            raise ConfigError(f"need 1 <= --regioncl.min-box-cells ({options.min_box_cells}) <= "
                              f"--regioncl.max-box-cells ({options.max_box_cells}) < {grid}, the C5 grid of "
                              f"--crops.global-size {crops.global_size}")
        return config

    def build_model(self) -> RegionClModel:
        return RegionClModel(build_trunk(self.config.model.backbone), self.options)

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        regioncl: RegionClModel = extract_model_from_parallel(model)
        options = self.options
        if regioncl.training:
            ema_update_(regioncl.momentum_encoder, regioncl.encoder, options.momentum, copy_buffers=False)
        query_images, key_images = batch.crops[0], batch.crops[1]
        size = query_images.shape[-1]
        box = draw_paste_box(size, options.min_box_cells, options.max_box_cells)
        paste_mask = box.mask(size // C5_STRIDE, query_images.device)
        out = model(query_images, paste_reversed(query_images, box), key_images, paste_mask)
        queue = regioncl.queue.snapshot()
        instance = info_nce(out.query, out.key, queue, options.temperature)
        sources = paste_sources(len(out.key), out.key.device)
        region = region_info_nce(out.canvas, out.paste, out.key, sources, queue, options.temperature)
        if regioncl.training:
            regioncl.queue.push(out.key)
        return LossOutput(instance + region, {"loss_instance": instance.detach(), "loss_region": region.detach()})
