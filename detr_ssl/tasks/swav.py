"""SwAV backbone pretraining (Caron et al., 2020): the teacher and backbone init DetReg expects.

Multi-crop views go through the ResNet trunk and a projection MLP to L2-normalised embeddings, scored
against L2-normalised prototypes. The global views' scores (optionally preceded by a queue of earlier
embeddings) become Sinkhorn-Knopp codes, and every other view predicts them. Prototypes are renormalised
before every step and get no gradient for the first ``freeze_prototypes_steps`` batches.

Ours, not the paper's: AdamW from the shared optimiser config instead of LARS, and per-process BatchNorm
statistics (no SyncBatchNorm, which does not run on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from detr_ssl.blocks.heads import mlp
from detr_ssl.datasets.multicrop import Views
from detr_ssl.losses.output import LossOutput
from detr_ssl.losses.swav import sinkhorn_knopp, swapped_prediction_loss
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask, build_trunk
from detr_ssl.tasks.options.swav import SwavConfig, SwavOptions


class SwavModel(nn.Module):
    """ResNet trunk + projection head + prototypes, with the embedding queue and batch counter as buffers
    (so a checkpoint resumes them)."""

    def __init__(self, trunk: nn.Module, options: SwavConfig, num_global: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.projection_head = mlp(trunk.num_features, options.hidden_dim, options.feature_dim, norm="bn")
        self.prototypes = nn.Linear(options.feature_dim, options.num_prototypes, bias=False)
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue", torch.zeros(num_global, options.queue_length, options.feature_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def embed(self, crops: list[Tensor]) -> list[Tensor]:
        """Per view, L2-normalised embeddings ``(B, D)``; views of one size go through the trunk together."""
        embeddings: list[Tensor | None] = [None] * len(crops)
        for size in dict.fromkeys(crop.shape[-1] for crop in crops):
            indices = [i for i, crop in enumerate(crops) if crop.shape[-1] == size]
            features = self.trunk(torch.cat([crops[i] for i in indices]))
            chunks = F.normalize(self.projection_head(features), dim=1).chunk(len(indices))
            for i, chunk in zip(indices, chunks):
                embeddings[i] = chunk
        return embeddings  # type: ignore[return-value]

    def forward(self, crops: list[Tensor], freeze_prototypes: bool) -> tuple[list[Tensor], list[Tensor]]:
        """-> (embeddings, prototype scores) per view. Frozen prototypes still take part in the graph (with
        a zero gradient), so distributed data parallel sees every parameter used."""
        embeddings = self.embed(crops)
        weight = self.prototypes.weight
        if freeze_prototypes:
            weight = weight.detach() + 0 * weight
        return embeddings, [F.linear(embedding, weight) for embedding in embeddings]


@register_task("swav")
class SwavTask(SwavOptions, BackbonePretextTask):
    def build_model(self) -> SwavModel:
        return SwavModel(build_trunk(self.config.model.backbone), self.options, self.config.crops.num_global)

    def layout_heads(self, model: nn.Module) -> dict[str, Tensor]:
        heads = {f"projection_head.{k}": v for k, v in model.projection_head.state_dict().items()}
        return {**heads, "prototypes.weight": model.prototypes.weight.detach()}

    def compute_loss(self, model: nn.Module, batch: Views) -> LossOutput:
        swav: SwavModel = extract_model_from_parallel(model)
        swav.normalize_prototypes()
        frozen = bool(swav.batches_seen < self.options.freeze_prototypes_steps)
        embeddings, scores = model(batch.crops, freeze_prototypes=frozen)
        num_global = self.config.crops.num_global
        codes = {view: self._codes(swav, view, embeddings[view], scores[view]) for view in range(num_global)}
        loss = swapped_prediction_loss(scores, codes, self.options.temperature)
        if swav.training:
            swav.batches_seen += 1
        return LossOutput(loss, {"loss_swav": loss.detach()})

    @torch.no_grad()
    def _codes(self, swav: SwavModel, view: int, embedding: Tensor, scores: Tensor) -> Tensor:
        """Soft codes of one global view: Sinkhorn over the queue (when in use) and the batch, batch rows kept."""
        batch = scores.shape[0]
        queue = swav.queue[view]
        use_queue = (len(queue) > 0 and swav.queue_filled >= len(queue)
                     and swav.batches_seen >= self.options.queue_start_step)
        if use_queue:
            scores = torch.cat((queue @ swav.prototypes.weight.T, scores))
        plan = sinkhorn_knopp(scores, self.options.epsilon, self.options.sinkhorn_iterations)
        codes = plan[-batch:] / plan[-batch:].sum(dim=1, keepdim=True)
        if len(queue) > 0 and swav.training:
            queue.copy_(torch.cat((embedding.detach(), queue))[: len(queue)])
            if view == 0:
                swav.queue_filled += batch
        return codes
