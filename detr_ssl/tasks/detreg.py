"""DetReg: region proposals as pseudo-boxes + object embeddings from a frozen teacher (Bar et al., CVPR 2022).

Targets per image are the first ``top_k`` selective-search boxes (class-agnostic). Each box is cropped
from the (augmented) image, resized and embedded by a frozen teacher (SwAV ResNet-50 in the paper);
a 2-layer MLP head on every decoder layer predicts the embedding of the proposal its query matched,
trained with L1 next to the usual set loss.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from detr_ssl.config import PretrainConfig
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.collate import Batch
from detr_ssl.losses import LossOutput, build_criterion
from detr_ssl.losses.matched_features import all_layers_feature_loss
from detr_ssl.models.crops import crop_and_resize, normalized_cxcywh_to_abs_xyxy
from detr_ssl.models.deformable_detr import DeformableDETR, build_model
from detr_ssl.models.heads import MLP
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.models.teachers import FrozenEncoder, build_teacher
from detr_ssl.proposals import ProposalCache, ProposalDataset, ProposalProvider, ProposalSettings
from detr_ssl.tasks import register_task
from detr_ssl.tasks.base import PretextTask


def proposal_dataset(config: PretrainConfig, images: ImageFolderDataset, transforms) -> ProposalDataset:
    """Unlabeled images whose targets are their cached selective-search proposals (class 0); the cache
    and proposal settings are the ``--proposal-*`` options (default cache: OUTPUT/proposals)."""
    options = config.detreg
    settings = ProposalSettings(resize=options.proposal_resize, top_k=options.proposal_top_k)
    cache = ProposalCache(options.proposal_cache or Path(config.run.output_dir) / "proposals", settings)
    provider = ProposalProvider(settings, cache, require_cache=options.require_cache)
    return ProposalDataset(images, provider, transforms)


class DetRegModel(nn.Module):
    """Deformable DETR + an embedding head on every decoder layer's output."""

    def __init__(self, detector: DeformableDETR, embedding_dim: int) -> None:
        super().__init__()
        self.detector = detector
        self.embedding_head = MLP(detector.hidden_dim, detector.hidden_dim, embedding_dim, 2)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[DetectionOutput, torch.Tensor]:
        """-> detections and embeddings ``(L_dec, B, Q, E)``."""
        output = self.detector(images, mask)
        return output, self.embedding_head(output.hidden_states)


@register_task("detreg")
class DetRegTask(PretextTask):
    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        """Backbone frozen during pretraining, as published."""
        return replace(config, model=replace(config.model, train_backbone=False))

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self.options = config.detreg
        self.criterion = build_criterion(1, config.loss)
        self.teacher: FrozenEncoder | None = None

    def build_model(self) -> DetRegModel:
        detector = build_model(self.config.model, num_classes=1)
        self.teacher = build_teacher(self.options.teacher_checkpoint,
                                     self.options.teacher_arch or self.config.model.backbone,
                                     self.options.teacher_stage, fallback=detector.backbone)
        return DetRegModel(detector, self.teacher.dim)

    def build_dataset(self, images: ImageFolderDataset, transforms) -> Dataset:
        return proposal_dataset(self.config, images, transforms)

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        if self.teacher is None:
            raise RuntimeError("build_model() creates the teacher; call it before training")
        device = batch.images.device
        self.teacher.to(device)
        boxes = [normalized_cxcywh_to_abs_xyxy(t["boxes"], t["size"]) for t in batch.targets]
        crops = crop_and_resize(batch.images, boxes, self.options.crop_size)
        embeddings = self.teacher(crops).split([len(b) for b in boxes])
        output, predicted = model(batch.images, batch.mask)
        loss = self.criterion(output, batch.targets)
        embed, embed_terms = all_layers_feature_loss(predicted, list(embeddings), loss.layer_indices,
                                                     loss.num_boxes, "l1", "loss_embedding")
        return replace(loss, total=loss.total + self.options.embedding_weight * embed,
                       terms={**loss.terms, **embed_terms})
