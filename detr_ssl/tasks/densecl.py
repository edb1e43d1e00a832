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
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.config import DenseClConfig, MultiCropConfig, PretrainConfig
from detr_ssl.datasets.multicrop import Views
from detr_ssl.distributed import all_gather_cat
from detr_ssl.errors import ConfigError
from detr_ssl.losses.densecl import dense_correspondence, dense_info_nce, info_nce
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import (
    BackbonePretextTask,
    build_trunk,
    demo_backbone_defaults,
)
from detr_ssl.tasks.base import TermsLoss


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
        self.projection_head = nn.Sequential(nn.Linear(channels, options.hidden_dim), nn.ReLU(inplace=True),
                                             nn.Linear(options.hidden_dim, options.feature_dim))
        self.dense_head = nn.Sequential(nn.Conv2d(channels, options.hidden_dim, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(options.hidden_dim, options.feature_dim, 1))

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
        self.momentum_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        shape = (options.queue_length, options.feature_dim)
        self.register_buffer("queue", F.normalize(torch.randn(shape), dim=1))
        self.register_buffer("dense_queue", F.normalize(torch.randn(shape), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @property
    def trunk(self) -> nn.Module:
        """The query encoder's trunk: what the export writes."""
        return self.encoder.trunk

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """Key parameters <- momentum * key + (1 - momentum) * query; key buffers (BN statistics) <- query's."""
        for key, query in zip(self.momentum_encoder.parameters(), self.encoder.parameters(), strict=True):
            key.copy_(momentum * key + (1 - momentum) * query)
        for key, query in zip(self.momentum_encoder.buffers(), self.encoder.buffers(), strict=True):
            key.copy_(query)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, dense_keys: Tensor) -> None:
        """Writes one global and one pooled dense key per image over the oldest entries (a ring buffer;
        only the newest ``queue_length`` keys are kept when more arrive at once)."""
        length = len(self.queue)
        keys, dense_keys = keys[-length:], dense_keys[-length:]
        rows = (self.queue_pointer + torch.arange(len(keys), device=keys.device)) % length
        self.queue[rows] = keys.to(self.queue.dtype)
        self.dense_queue[rows] = dense_keys.to(self.dense_queue.dtype)
        self.queue_pointer.copy_((self.queue_pointer + len(keys)) % length)

    def forward(self, query_images: Tensor, key_images: Tensor) -> tuple[Encoded, Encoded]:
        """-> (query encoder outputs for ``query_images``, key encoder outputs for ``key_images``, no gradient)."""
        query = self.encoder(query_images)
        with torch.no_grad():
            key = self.momentum_encoder(key_images)
        return query, key


@register_task("densecl")
class DenseClTask(BackbonePretextTask):
    @classmethod
    def defaults(cls, config: PretrainConfig) -> PretrainConfig:
        """MoCo v2's views as released (two global crops, ColorJitter(0.4, 0.4, 0.4, 0.1): strength 0.5)."""
        if config.preset != "demo":
            return replace(config, crops=MultiCropConfig(global_size=224, num_local=0, global_scale=(0.2, 1.0),
                                                         color_strength=0.5))
        config = demo_backbone_defaults(
            config, MultiCropConfig(global_size=64, local_size=32, num_local=0, global_scale=(0.2, 1.0),
                                    color_strength=0.5))
        # A queue as long as the 32 demo photos holds the previous epoch, one key per photo. With 256 it
        # holds 8 keys of every photo (false negatives), and the loss did not fall in the demo's 200 steps.
        return replace(config, densecl=replace(config.densecl, feature_dim=64, hidden_dim=256, queue_length=32,
                                               momentum=0.99))

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        crops = config.crops
        if crops.num_global != 2 or crops.num_local != 0:
            raise ConfigError(f"--task densecl contrasts exactly two global views; got --crops.num-global "
                              f"{crops.num_global} and --crops.num-local {crops.num_local} (use 2 and 0)")
        if config.densecl.queue_length < 1:
            raise ConfigError(f"--densecl.queue-length must be positive, got {config.densecl.queue_length}")
        return config

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self.options = config.densecl

    def build_model(self) -> DenseClModel:
        return DenseClModel(build_trunk(self.config.model.backbone), self.options)

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        return {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("trunk.")}

    def compute_loss(self, model: nn.Module, batch: Views) -> TermsLoss:
        densecl: DenseClModel = extract_model_from_parallel(model)
        if densecl.training:
            densecl.momentum_update(self.options.momentum)
        query, key = model(batch.crops[0], batch.crops[1])
        # Clones: the queues are updated in place below, before backward needs them.
        queue, dense_queue = densecl.queue.clone(), densecl.dense_queue.clone()
        temperature = self.options.temperature
        global_loss = info_nce(query.embedding, key.embedding, queue, temperature)
        correspondence = dense_correspondence(query.features, key.features)
        dense_loss = dense_info_nce(query.dense, key.dense, correspondence, dense_queue, temperature)
        weight = self.options.dense_weight
        total = (1 - weight) * global_loss + weight * dense_loss
        if densecl.training:
            densecl.enqueue(all_gather_cat(key.embedding), all_gather_cat(key.pooled_dense))
        return TermsLoss(total, {"loss_global": global_loss.detach(), "loss_dense": dense_loss.detach()})
