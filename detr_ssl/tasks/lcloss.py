"""LC-loss backbone pretraining (Islam et al., "Self-Supervised Learning with Local Contrastive Loss for
Detection and Semantic Segmentation", WACV 2023): BYOL plus a pixel-level local contrastive loss.

The paper adds its LC-loss to an existing image-level method and its main results build on BYOL, so this
task is BYOL (Grill et al., 2020) with a dense branch. Two global views of each image pass through the
online network (ResNet trunk, projector, predictor) and the target network (a momentum copy of trunk and
projector, no gradient, its momentum rising from ``base_momentum`` to 1 along BYOL's cosine schedule). The
global loss is BYOL's ``2 - 2 cos(prediction, target projection)``; the LC-loss
(:mod:`detr_ssl.losses.local_contrast`) contrasts the online dense head's map of one view with the target
dense head's map of the other, sampled at corresponding image points. Both are symmetrised over the two
view orders and averaged; total = global + ``lc_weight`` x LC. Nothing is queued or gathered across
processes (LC-loss takes its negatives from the same image).

Choices and known differences (no code was released, so these are our reading of the paper):

- The dense branch is a 1x1-conv copy of the projector's architecture on the trunk's native last feature
  map (7x7 at 224 px), without a predictor: the LC-loss has negatives, so it needs none against collapse.
- LC temperature 0.2 and weight 1 are assumptions, as is averaging (not summing) the two view orders.
- The target keeps its own BatchNorm statistics; views are encoded one at a time (per-view batch
  statistics), as BYOL does.
- AdamW from the shared optimiser config instead of LARS. The momentum schedule runs per training batch
  over every batch of the run (counted when the dataset is built); its counter is a model buffer, so a
  resumed run continues it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.momentum import cosine_momentum, ema_update_, momentum_copy
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.contrastive import negative_cosine
from detr_ssl.losses.local_contrast import lc_loss
from detr_ssl.losses.output import LossOutput
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.lcloss import LcLossConfig, LcLossOptions


class Projected(NamedTuple):
    """One network's outputs for one view (a tuple, so DDP and Accelerate walk it)."""

    projection: Tensor
    """``(B, D)`` projector output for the pooled trunk features (the predictor's input online)."""
    dense: Tensor
    """``(B, D, h, w)`` dense head output, one embedding per trunk location."""


class ByolBranch(nn.Module):
    """Trunk + projector (on the pooled features) + dense head (the same MLP as 1x1 convolutions)."""

    def __init__(self, trunk: nn.Module, options: LcLossConfig) -> None:
        super().__init__()
        self.trunk = trunk
        channels = trunk.num_features
        self.projector = mlp(channels, options.hidden_dim, options.projection_dim, norm="bn")
        self.dense_head = mlp(channels, options.hidden_dim, options.projection_dim, norm="bn", conv=True)

    def forward(self, images: Tensor) -> Projected:
        features = self.trunk.forward_features(images)
        return Projected(self.projector(features.mean(dim=(2, 3))), self.dense_head(features))


class LcLossOutputs(NamedTuple):
    """Both views through both networks: index 0 and 1 are the first and second view."""

    predictions: tuple[Tensor, Tensor]
    """``(B, D)`` online predictor outputs."""
    online_dense: tuple[Tensor, Tensor]
    """``(B, D, h, w)`` online dense maps."""
    target: tuple[Projected, Projected]
    """Target network outputs (no gradient)."""


class LcLossModel(nn.Module):
    """The online branch and predictor, the target branch, and how many training batches it has seen (a
    buffer, so a resumed run continues the momentum schedule)."""

    def __init__(self, trunk: nn.Module, options: LcLossConfig) -> None:
        super().__init__()
        self.online = ByolBranch(trunk, options)
        self.predictor = mlp(options.projection_dim, options.hidden_dim, options.projection_dim, norm="bn")
        self.target = momentum_copy(self.online)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    @property
    def trunk(self) -> nn.Module:
        """The online trunk: what the export writes."""
        return self.online.trunk

    def forward(self, first: Tensor, second: Tensor) -> LcLossOutputs:
        online = [self.online(first), self.online(second)]
        with torch.no_grad():
            target = (self.target(first), self.target(second))
        return LcLossOutputs(tuple(self.predictor(out.projection) for out in online),
                             tuple(out.dense for out in online), target)


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's ``2 - 2 cos`` between predictions and (stop-gradient) target projections, mean over the batch."""
    return 2 + 2 * negative_cosine(prediction, target.detach())


@register_task("lcloss")
class LcLossTask(LcLossOptions, BackbonePretextTask):
    two_views_only = byol_views = True

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        options = config.lcloss
        if options.lc_weight < 0 or options.lc_temperature <= 0:
            raise ConfigError(f"--lcloss.lc-weight must be >= 0 and --lcloss.lc-temperature > 0, got "
                              f"{options.lc_weight} and {options.lc_temperature}")
        if not 0 <= options.base_momentum <= 1:
            raise ConfigError(f"--lcloss.base-momentum must lie in [0, 1], got {options.base_momentum}")
        return config

    def build_model(self) -> LcLossModel:
        return LcLossModel(build_trunk(self.config.model.backbone), self.options)

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        heads = {k: v for k, v in model.online.state_dict().items() if not k.startswith("trunk.")}
        return {**heads, **{f"predictor.{k}": v for k, v in model.predictor.state_dict().items()}}

    def momentum(self, batches_seen: int) -> float:
        """The target momentum at a batch: BYOL's cosine schedule, held at 1 past its end."""
        # Before the dataset is built the run's length is unknown: the base momentum, held.
        total = self.run_batches.total if self.run_batches is not None else 0
        return cosine_momentum(self.options.base_momentum, batches_seen, total)

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        lcloss: LcLossModel = extract_model_from_parallel(model)
        if len(batch.geometry) < 2:
            raise ValueError("the LC-loss needs both views' crop geometry (Views.geometry); got none")
        if lcloss.training:
            ema_update_(lcloss.target, lcloss.online, self.momentum(int(lcloss.batches_seen)), copy_buffers=False)
            lcloss.batches_seen += 1
        out: LcLossOutputs = model(batch.crops[0], batch.crops[1])
        sizes = [tuple(crop.shape[-2:]) for crop in batch.crops]
        global_terms, local_terms = [], []
        for a, b in ((0, 1), (1, 0)):
            global_terms.append(byol_loss(out.predictions[a], out.target[b].projection))
            local_terms.append(lc_loss(out.online_dense[a], out.target[b].dense.detach(), batch.geometry[a],
                                       batch.geometry[b], sizes[b], self.options.lc_temperature))
        global_loss, local_loss = sum(global_terms) / 2, sum(local_terms) / 2
        total = global_loss + self.options.lc_weight * local_loss
        return LossOutput(total, {"loss_byol": global_loss.detach(), "loss_lc": local_loss.detach()})
