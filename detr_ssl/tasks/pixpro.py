"""PixPro backbone pretraining (Xie et al., "Propagate Yourself: Exploring Pixel-Level Consistency for
Unsupervised Visual Representation Learning", CVPR 2021; arXiv 2011.10043).

Two views of each image (BYOL's asymmetric augmentation) go through an online and a momentum target
encoder, each the ResNet trunk plus a 1x1-conv projector on its last feature map. On the online side the
pixel propagation module (PPM) smooths every projection map: location i becomes
``sum_j max(cos(x_i, x_j), 0) ** gamma * g(x_j)`` (g a 1x1 conv, its output L2-normalised per location),
then L2-normalised. The loss pulls each propagated cell of one view towards the target cells of the other
view that show the same place of the image (centres closer than 0.7 of a cell diagonal, measured in the
released code's normalised crop coordinates, flips included), both directions summed. The target encoder
follows the online one with a momentum rising from 0.99 to 1 along a half cosine over the whole run.

Choices and known differences from the released code (github.com/zdaxie/PixPro, the defaults of
``tools/pixpro_base_r50_100ep.sh``):

- No instance branch (the release's ``--pixpro-ins-loss-weight``, 0 in its training scripts).
- Per-process BatchNorm statistics instead of SyncBatchNorm (which does not run on CPU); each view goes
  through each encoder as its own batch, as released.
- The cosine momentum schedule's length K is the number of batches the run trains: ``--optim.epochs`` x
  batches per epoch per process (or fewer when ``--max-steps`` ends the run first), computed when the
  dataset is built; ``--pixpro.momentum-steps`` fixes it instead. The release drops a last, partial batch
  and sets K = int(images / processes / batch * epochs), a little more than it trains. The step counter is a
  model buffer, so a resumed run continues the schedule; the update runs once per training batch (also with
  gradient accumulation) and, as released, moves parameters only: the target keeps its own BatchNorm
  statistics.
- The cells are the trunk's native output grid (7x7 for a ResNet-50 at 224 px, as released).
- AdamW from the shared optimiser config instead of LARS (base lr 1.0 per 256 images, weight decay 1e-5).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.geometry import positive_mask
from detr_ssl.blocks.heads import mlp
from detr_ssl.blocks.momentum import cosine_momentum, ema_update_, momentum_copy
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets.multicrop import ViewGeometry, Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.output import LossOutput
from detr_ssl.losses.pixpro import pixel_consistency_loss, pixel_propagation
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.pixpro import PixProConfig, PixProOptions


class PixProOutputs(NamedTuple):
    """One batch through both encoders (a tuple, so DDP and Accelerate walk it); maps ``(B, D, h, w)``,
    L2-normalised along D."""

    prediction_1: Tensor
    """Online projection of view 1 after the PPM."""
    prediction_2: Tensor
    target_1: Tensor
    """Target projection of view 1 (no gradient)."""
    target_2: Tensor


class PixProEncoder(nn.Module):
    """Trunk + 1x1-conv projector: images ``(B, 3, H, W)`` -> projection maps ``(B, D, h, w)``, unnormalised."""

    def __init__(self, trunk: nn.Module, options: PixProConfig) -> None:
        super().__init__()
        self.trunk = trunk
        self.projector = mlp(trunk.num_features, options.hidden_dim, options.feature_dim, norm="bn", conv=True)

    def forward(self, images: Tensor) -> Tensor:
        return self.projector(self.trunk.forward_features(images))


def value_transform(dim: int, layers: int) -> nn.Module:
    """The PPM's g for ``--pixpro.transform-layers`` 0, 1 or 2 (the released options)."""
    if layers == 0:
        return nn.Identity()
    if layers == 1:
        return nn.Conv2d(dim, dim, 1)
    return mlp(dim, dim, dim, norm="bn", conv=True)


class PixelPropagation(nn.Module):
    """The PPM: :func:`~detr_ssl.losses.pixpro.pixel_propagation` of a projection map with its own value
    transform, L2-normalised per location."""

    def __init__(self, options: PixProConfig) -> None:
        super().__init__()
        self.transform = value_transform(options.feature_dim, options.transform_layers)
        self.power = options.power
        self.clamp_value = options.clamp_value

    def forward(self, projections: Tensor) -> Tensor:
        propagated = pixel_propagation(projections, self.transform(projections), self.power, self.clamp_value)
        return F.normalize(propagated, dim=1)


class PixProModel(nn.Module):
    """Online encoder + PPM, the momentum target encoder, and the count of momentum updates (a buffer, so
    a resumed run continues the schedule)."""

    def __init__(self, trunk: nn.Module, options: PixProConfig) -> None:
        super().__init__()
        self.encoder = PixProEncoder(trunk, options)
        self.propagation = PixelPropagation(options)
        self.momentum_encoder = momentum_copy(self.encoder)
        self.register_buffer("momentum_updates", torch.zeros((), dtype=torch.long))

    @property
    def trunk(self) -> nn.Module:
        """The online trunk: what the export writes."""
        return self.encoder.trunk

    def forward(self, view_1: Tensor, view_2: Tensor) -> PixProOutputs:
        """Each view through each encoder as its own batch (so BatchNorm sees one view at a time)."""
        prediction_1 = self.propagation(self.encoder(view_1))
        prediction_2 = self.propagation(self.encoder(view_2))
        with torch.no_grad():
            target_1 = F.normalize(self.momentum_encoder(view_1), dim=1)
            target_2 = F.normalize(self.momentum_encoder(view_2), dim=1)
        return PixProOutputs(prediction_1, prediction_2, target_1, target_2)

    @torch.no_grad()
    def update_target(self, base_momentum: float, total_steps: int) -> None:
        """Moves the target's parameters towards the online ones (BatchNorm statistics stay the target's)
        with the cosine-scheduled momentum of this update, held at 1 from ``total_steps`` on."""
        momentum = cosine_momentum(base_momentum, int(self.momentum_updates), total_steps)
        ema_update_(self.momentum_encoder, self.encoder, momentum, copy_buffers=False)
        self.momentum_updates += 1


def positive_pairs(view_a: ViewGeometry, view_b: ViewGeometry, grid: tuple[int, int], radius: float) -> Tensor:
    """``(B, h*w, h*w)`` bool: cells of view a and view b (same ``grid``) whose centres are closer than
    ``radius`` cell diagonals, in the released code's normalised crop coordinates (its mask bit for bit)."""
    return positive_mask(view_a.boxes, view_a.flipped, view_b.boxes, view_b.flipped, grid, grid, radius,
                         image_sizes=view_a.image_sizes)


@register_task("pixpro")
class PixProTask(PixProOptions, BackbonePretextTask):
    two_views_only = byol_views = True

    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        config = super().configure(config)
        options = config.pixpro
        if options.transform_layers not in (0, 1, 2):
            raise ConfigError(f"--pixpro.transform-layers must be 0, 1 or 2, got {options.transform_layers}")
        if options.power <= 0 or (options.power != int(options.power) and options.clamp_value < 0):
            raise ConfigError(f"--pixpro.power must be positive, and a whole number when --pixpro.clamp-value is "
                              f"negative; got {options.power} and {options.clamp_value}")
        if not 0 <= options.momentum <= 1 or options.momentum_steps < 0:
            raise ConfigError(f"--pixpro.momentum must lie in [0, 1] and --pixpro.momentum-steps be at least 0; "
                              f"got {options.momentum} and {options.momentum_steps}")
        return config

    def build_model(self) -> PixProModel:
        return PixProModel(build_trunk(self.config.model.backbone), self.options)

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        projector = {f"projector.{k}": v for k, v in model.encoder.projector.state_dict().items()}
        return {**projector, **{f"propagation.{k}": v for k, v in model.propagation.state_dict().items()}}

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        pixpro: PixProModel = extract_model_from_parallel(model)
        if pixpro.training:
            total = self.schedule_length(self.options.momentum_steps, "--pixpro.momentum-steps")
            pixpro.update_target(self.options.momentum, total)
        out: PixProOutputs = model(batch.crops[0], batch.crops[1])
        grid = tuple(out.prediction_1.shape[-2:])
        positives = positive_pairs(batch.geometry[0], batch.geometry[1], grid, self.options.positive_radius)
        loss_1 = pixel_consistency_loss(out.prediction_1, out.target_2, positives)
        loss_2 = pixel_consistency_loss(out.prediction_2, out.target_1, positives.transpose(1, 2))
        return LossOutput(loss_1 + loss_2, {"loss_view1": loss_1.detach(), "loss_view2": loss_2.detach()})
