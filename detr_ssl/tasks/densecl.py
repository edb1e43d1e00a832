"""DenseCL backbone pretraining (Wang et al., "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR 2021).

Two global views of each image: the first goes through the query encoder, the second through the key
encoder, a momentum copy of it that gets no gradient. Each encoder is the ResNet trunk plus two heads on
its last feature map: MoCo v2's global head (average pool, Linear -> ReLU -> Linear) and the dense head
(1x1 conv -> ReLU -> 1x1 conv, one embedding per location). The loss is
``(1 - dense_weight) * global InfoNCE + dense_weight * dense InfoNCE``: globally the key of the same image
is the positive and a queue of earlier keys the negatives; densely every query location's positive is the
key location matched to it by backbone-feature similarity, and the negatives come from a second queue
holding one pooled dense key per image. Queues and their pointer are buffers, so a checkpoint resumes
them; keys from every process are enqueued, so all processes share one queue.

Choices and known differences from the paper:

- The loss is one-directional (query = first view, key = second), as in the paper; not symmetrised.
- No shuffling BN: the paper shuffles the key batch across GPUs so BatchNorm statistics cannot leak which
  query and key belong together. This runs single-process on CPU (and per-process BN when distributed),
  so both encoders normalise with their own process's batch statistics.
- The momentum update runs at the start of every training batch, i.e. after the previous optimiser step
  (as in MoCo); with gradient accumulation that is once per batch, not per optimiser step. Besides the
  parameter update it copies the query encoder's BatchNorm buffers into the key encoder.
- The dense grid is the trunk's native output grid (the paper pools to 7x7, ResNet-50's grid at 224 px).
- AdamW from the shared optimiser config instead of SGD (lr 0.03, momentum 0.9).
- Not in DenseCL: ``--densecl.lc-weight`` > 0 adds LC-loss (:mod:`detr_ssl.losses.local_contrast`) between
  the query and key dense maps, as Islam et al. (WACV 2023) add it to a base method; off by default.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.momentum import ema_update_, momentum_copy
from detr_ssl.blocks.queue import KeyQueue
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.contrastive import info_nce
from detr_ssl.losses.densecl import dense_correspondence, dense_info_nce
from detr_ssl.losses.local_contrast import as_dense_map, lc_loss
from detr_ssl.losses.output import LossOutput
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.densecl import DenseClConfig, DenseClOptions


class Encoded(NamedTuple):
    """One encoder's outputs for a batch of views (a tuple, so DDP and Accelerate walk it)."""

    features: Tensor
    """``(B, S, C)`` backbone feature map, locations flattened (what correspondence is computed on)."""
    embedding: Tensor
    """``(B, D)`` L2-normalised global embedding."""
    dense: Tensor
    """``(B, S, D)`` L2-normalised dense embeddings."""
    pooled_dense: Tensor
    """``(B, D)`` L2-normalised average of the dense head's output: what the dense queue stores."""


class DenseClEncoder(nn.Module):
    """Trunk + global projection head + dense projection head."""

    def __init__(self, trunk: nn.Module, options: DenseClConfig) -> None:
        super().__init__()
        self.trunk = trunk
        channels = trunk.num_features
        self.projection_head = mlp(channels, options.hidden_dim, options.feature_dim)
        self.dense_head = mlp(channels, options.hidden_dim, options.feature_dim, conv=True)

    def forward(self, images: Tensor) -> Encoded:
        features = self.trunk.forward_features(images)
        dense = self.dense_head(features).flatten(2)
        return Encoded(
            features=features.flatten(2).transpose(1, 2),
            embedding=F.normalize(self.projection_head(features.mean(dim=(2, 3))), dim=1),
            dense=F.normalize(dense, dim=1).transpose(1, 2),
            pooled_dense=F.normalize(dense.mean(dim=2), dim=1),
        )


class DenseClModel(nn.Module):
    """Query encoder, its momentum copy (the key encoder), and the global and dense key queues."""

    def __init__(self, trunk: nn.Module, options: DenseClConfig) -> None:
        super().__init__()
        self.encoder = DenseClEncoder(trunk, options)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.queue = KeyQueue(options.queue_length, options.feature_dim)
        self.dense_queue = KeyQueue(options.queue_length, options.feature_dim)

    @property
    def trunk(self) -> nn.Module:
        """The query encoder's trunk: what the export writes."""
        return self.encoder.trunk

    def forward(self, query_images: Tensor, key_images: Tensor) -> tuple[Encoded, Encoded]:
        """-> (query encoder outputs for ``query_images``, key encoder outputs for ``key_images``, no gradient)."""
        query = self.encoder(query_images)
        with torch.no_grad():
            key = self.momentum_encoder(key_images)
        return query, key


@register_task("densecl")
class DenseClTask(DenseClOptions, BackbonePretextTask):
    two_views_only = True

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        if config.densecl.queue_length < 1:
            raise ConfigError(f"--densecl.queue-length must be positive, got {config.densecl.queue_length}")
        if config.densecl.lc_weight < 0 or config.densecl.lc_temperature <= 0:
            raise ConfigError(f"--densecl.lc-weight must be >= 0 and --densecl.lc-temperature > 0, got "
                              f"{config.densecl.lc_weight} and {config.densecl.lc_temperature}")
        return config

    def build_model(self) -> DenseClModel:
        return DenseClModel(build_trunk(self.config.model.backbone), self.options)

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        densecl: DenseClModel = extract_model_from_parallel(model)
        if densecl.training:
            ema_update_(densecl.momentum_encoder, densecl.encoder, self.options.momentum)
        query, key = model(batch.crops[0], batch.crops[1])
        queue, dense_queue = densecl.queue.snapshot(), densecl.dense_queue.snapshot()
        temperature = self.options.temperature
        global_loss = info_nce(query.embedding, key.embedding, queue, temperature)
        correspondence = dense_correspondence(query.features, key.features)
        dense_loss = dense_info_nce(query.dense, key.dense, correspondence, dense_queue, temperature)
        weight = self.options.dense_weight
        total = (1 - weight) * global_loss + weight * dense_loss
        terms = {"loss_global": global_loss.detach(), "loss_dense": dense_loss.detach()}
        if self.options.lc_weight > 0:
            local_loss = self._lc_loss(query, key, batch)
            total = total + self.options.lc_weight * local_loss
            terms["loss_lc"] = local_loss.detach()
        if densecl.training:
            densecl.queue.push(key.embedding)
            densecl.dense_queue.push(key.pooled_dense)
        return LossOutput(total, terms)

    def _lc_loss(self, query: Encoded, key: Encoded, batch: Views) -> Tensor:
        """LC-loss of the query view's dense map against the key view's, through the views' crop geometry."""
        if len(batch.geometry) < 2:
            raise ValueError("--densecl.lc-weight > 0 needs both views' crop geometry (Views.geometry); got none")
        return lc_loss(as_dense_map(query.dense), as_dense_map(key.dense), batch.geometry[0], batch.geometry[1],
                       tuple(batch.crops[1].shape[-2:]), self.options.lc_temperature)
