"""DetCo backbone pretraining (Xie et al., "DetCo: Unsupervised Contrastive Learning for Object Detection",
ICCV 2021; arXiv 2102.04803): MoCo v2 at every ResNet stage, between global views and jigsaw patch sets.

Two MoCo v2 views of each image: the first goes through the query encoder, the second through the key
encoder (a momentum copy, no gradient). Each view is seen twice by its encoder: whole (the *global* view)
and as a *local* view, a 3x3 jigsaw of it (:func:`detr_ssl.blocks.jigsaw.jigsaw`: one patch cut from each
cell, each patch encoded separately by the same trunk). At each of the four residual stages (C2..C5,
:func:`~detr_ssl.blocks.pyramid.trunk_stages`) the features are average-pooled; the global view's go
through that stage's global head, the nine patches' are concatenated (cell order, row-major) and go
through that stage's local head; every head is MoCo v2's (Linear -> ReLU -> Linear, L2-normalised output),
and every stage has its own global and local queue of earlier keys. Per stage ``s`` three InfoNCE terms
(temperature 0.2, the key of the same image positive, the stage's queue negatives):

- global-global: query global vs. key global, global queue;
- local-local: query local vs. key local, local queue;
- global-local (cross): query local vs. key global, global queue;

and the loss is ``sum_s w_s (gg_s + ll_s + gl_s)`` with ``w = (0.1, 0.4, 0.7, 1.0)`` for C2..C5. Queues
and their pointers are buffers (a checkpoint resumes them); keys from every process are enqueued, so all
processes share each queue. Only the trunk is exported: C2 is not a detector level and the heads are
pooled-vector MLPs, so nothing here could initialise the detector's ``input_proj``.

The pretraining code was never released (github.com/xieenze/DetCo holds detection configs only), so
there is no golden fixture. What follows the paper: MoCo v2 as the base (queue 65,536, momentum 0.999,
T=0.2, 2048-128 MLP heads), the three contrasts, per-stage heads and queues (separate global and local
ones), the stage weights, a 3x3 jigsaw whose nine patches are encoded separately by the shared trunk and
concatenated into the local MLP. Choices of ours, where the paper is silent or we could not run its code:

- The local view is cut from the same augmented view tensor as the global one (one crop, flip, colour and
  blur draw per view); the paper makes its local patch set with a transform of its own, in the jigsaw
  tradition it cites (PIRL). Each patch is a ``patch_size`` crop at a uniformly random position inside its
  cell (PIRL: 64 px in 85 px cells; here 64 px in the 74-75 px cells of a 224 px view), not resized, and
  gets no colour jitter of its own.
  Offsets are drawn from torch's default generator at each step (seeded alike on every process at the
  start of a run; a checkpoint keeps its state).
- The cross term is one direction, the query's local view against the key's global view (with the global
  queue), as we read the paper's global-local equation; not symmetrised, and no key-local vs. query-global.
- The local heads' hidden width is the global heads' (2048); their input is 9 x the stage's channels
  (with ResNet-50 the four local heads hold 72M parameters, the four global ones 9M).
- The momentum update moves parameters only, as MoCo v2 released (the key encoder keeps its own BatchNorm
  statistics); it runs at the start of every training batch (once per batch with gradient accumulation).
- No shuffling BN (MoCo shuffles the key batch across GPUs): per-process BatchNorm, as our DenseCL and
  RegionCL. The query encoder sees the global views and the patches as two batches (BN statistics apart).
- AdamW from the shared optimiser config instead of MoCo v2's SGD (lr 0.03, momentum 0.9, cosine).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.jigsaw import cell_edges, jigsaw
from detr_ssl.blocks.momentum import ema_update_, momentum_copy
from detr_ssl.blocks.pyramid import trunk_stages
from detr_ssl.blocks.queue import KeyQueue
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.contrastive import info_nce
from detr_ssl.losses.output import LossOutput
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.detco import DetCoConfig, DetCoOptions

GRID = 3
"""The jigsaw is GRID x GRID cells (the paper's 3x3)."""
PATCHES = GRID * GRID
STAGES = ("c2", "c3", "c4", "c5")
"""The residual stages supervised, shallowest first (strides 4 to 32)."""
TERMS = ("global", "local", "cross")
"""The three contrasts of a stage: global-global, local-local, query local vs. key global."""


class StageEmbeddings(NamedTuple):
    """One encoder's embeddings of a batch (a tuple, so DDP and Accelerate walk it), all L2-normalised."""

    global_: Tensor
    """``(4, B, D)``: per stage (C2..C5), the global view's embedding."""
    local: Tensor
    """``(4, B, D)``: per stage, the embedding of the view's nine patches concatenated."""


def pooled_stages(trunk: nn.Module, images: Tensor) -> list[Tensor]:
    """``[(N, C_s)]``: the average-pooled output of each residual stage, C2..C5."""
    return [stage.mean(dim=(2, 3)) for stage in trunk_stages(trunk, images)]


class DetCoEncoder(nn.Module):
    """Trunk + a global and a local head per stage."""

    def __init__(self, trunk: nn.Module, options: DetCoConfig) -> None:
        super().__init__()
        self.trunk = trunk
        channels = [info["num_chs"] for info in trunk.feature_info][-len(STAGES):]
        self.global_heads = nn.ModuleList(mlp(c, options.hidden_dim, options.feature_dim) for c in channels)
        self.local_heads = nn.ModuleList(mlp(PATCHES * c, options.hidden_dim, options.feature_dim)
                                         for c in channels)

    def forward(self, images: Tensor, patches: Tensor) -> StageEmbeddings:
        """``images`` ``(B, 3, H, W)`` and their jigsaw ``patches`` ``(B, 9, 3, p, p)``, encoded as two batches."""
        batch = len(images)
        whole = pooled_stages(self.trunk, images)
        parts = pooled_stages(self.trunk, patches.flatten(0, 1))
        global_ = [head(x) for head, x in zip(self.global_heads, whole, strict=True)]
        local = [head(x.reshape(batch, -1)) for head, x in zip(self.local_heads, parts, strict=True)]
        return StageEmbeddings(F.normalize(torch.stack(global_), dim=-1), F.normalize(torch.stack(local), dim=-1))


class DetCoModel(nn.Module):
    """Query encoder, its momentum copy (the key encoder), and a global and a local key queue per stage."""

    def __init__(self, trunk: nn.Module, options: DetCoConfig) -> None:
        super().__init__()
        self.encoder = DetCoEncoder(trunk, options)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.global_queues = nn.ModuleList(KeyQueue(options.queue_length, options.feature_dim) for _ in STAGES)
        self.local_queues = nn.ModuleList(KeyQueue(options.queue_length, options.feature_dim) for _ in STAGES)

    @property
    def trunk(self) -> nn.Module:
        """The query encoder's trunk: what the export writes."""
        return self.encoder.trunk

    def forward(self, query_images: Tensor, query_patches: Tensor, key_images: Tensor, key_patches: Tensor
                ) -> tuple[StageEmbeddings, StageEmbeddings]:
        """-> (query encoder embeddings, key encoder embeddings, no gradient)."""
        query = self.encoder(query_images, query_patches)
        with torch.no_grad():
            key = self.momentum_encoder(key_images, key_patches)
        return query, key

    def snapshots(self) -> tuple[list[Tensor], list[Tensor]]:
        """Copies of the global and the local queues, per stage (safe across the :meth:`push` after them)."""
        return ([queue.snapshot() for queue in self.global_queues],
                [queue.snapshot() for queue in self.local_queues])

    def push(self, key: StageEmbeddings) -> None:
        """Enqueues each stage's global and local keys into that stage's queues (gathered over processes)."""
        for s in range(len(STAGES)):
            self.global_queues[s].push(key.global_[s])
            self.local_queues[s].push(key.local[s])


def stage_terms(query: StageEmbeddings, key: StageEmbeddings, global_queues: list[Tensor],
                local_queues: list[Tensor], temperature: float) -> Tensor:
    """``(4, 3)`` the unweighted InfoNCE of each stage (rows C2..C5) and contrast (columns :data:`TERMS`:
    global-global, local-local, query local vs. key global)."""
    rows = []
    for s in range(len(STAGES)):
        rows.append(torch.stack((
            info_nce(query.global_[s], key.global_[s], global_queues[s], temperature),
            info_nce(query.local[s], key.local[s], local_queues[s], temperature),
            info_nce(query.local[s], key.global_[s], global_queues[s], temperature),
        )))
    return torch.stack(rows)


def combine_terms(terms: Tensor, stage_weights: tuple[float, ...]) -> LossOutput:
    """``sum_s w_s (gg_s + ll_s + gl_s)`` of :func:`stage_terms`' matrix; logs each contrast and each stage,
    weighted (the three contrasts, and the four stages, each sum to the total)."""
    weighted = terms * terms.new_tensor(stage_weights).unsqueeze(1)
    logged = {f"loss_{name}": value for name, value in zip(TERMS, weighted.sum(dim=0).detach(), strict=True)}
    logged.update({f"loss_{name}": value for name, value in zip(STAGES, weighted.sum(dim=1).detach(), strict=True)})
    return LossOutput(weighted.sum(), logged)


@register_task("detco")
class DetCoTask(DetCoOptions, BackbonePretextTask):
    two_views_only = True

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        options = config.detco
        if options.queue_length < 1:
            raise ConfigError(f"--detco.queue-length must be positive, got {options.queue_length}")
        if options.temperature <= 0 or not 0 <= options.momentum <= 1:
            raise ConfigError(f"--detco.temperature must be positive and --detco.momentum in [0, 1]; got "
                              f"{options.temperature} and {options.momentum}")
        if min(options.stage_weights) < 0 or sum(options.stage_weights) <= 0:
            raise ConfigError(f"--detco.stage-weights must be non-negative and not all zero, got "
                              f"{' '.join(map(str, options.stage_weights))}")
        cell = int(cell_edges(config.crops.global_size, GRID).diff().min())
        if not 1 <= options.patch_size <= cell:
            raise ConfigError(f"--detco.patch-size must be 1 to {cell} (the smallest jigsaw cell of "
                              f"--crops.global-size {config.crops.global_size}), got {options.patch_size}")
        return config

    def build_model(self) -> DetCoModel:
        return DetCoModel(build_trunk(self.config.model.backbone), self.options)

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        """The C5 global head only (MoCo v2's head, under ``projection_head.``): the other seven heads, the
        local ones 72M parameters with ResNet-50, serve the pretext alone."""
        c5_head = model.encoder.global_heads[-1].state_dict()
        return {f"projection_head.{key}": value for key, value in c5_head.items()}

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        detco: DetCoModel = extract_model_from_parallel(model)
        options = self.options
        if detco.training:
            ema_update_(detco.momentum_encoder, detco.encoder, options.momentum, copy_buffers=False)
        query_images, key_images = batch.crops[0], batch.crops[1]
        query_patches, _ = jigsaw(query_images, GRID, options.patch_size)
        key_patches, _ = jigsaw(key_images, GRID, options.patch_size)
        query, key = model(query_images, query_patches, key_images, key_patches)
        global_queues, local_queues = detco.snapshots()
        loss = combine_terms(stage_terms(query, key, global_queues, local_queues, options.temperature),
                             options.stage_weights)
        if detco.training:
            detco.push(key)
        return loss
