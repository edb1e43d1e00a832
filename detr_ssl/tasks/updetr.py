"""UP-DETR on Deformable DETR: detect random query patches (Dai et al., CVPR 2021).

Per image, ``num_patches`` random crops are encoded by the detector's own backbone (frozen by default;
global pooled, no gradient). Each patch feature is projected and added to its group of
``num_queries // num_patches`` decoder queries (each query's left out with probability 0.1 in training);
a block-diagonal self-attention mask keeps the groups apart.
Targets are the patch boxes, class-agnostic (one sigmoid logit = match / no object, with the no-object
loss down-weighted), and every decoder layer also reconstructs the matched patch's feature.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn
from torch.utils.data import Dataset

from detr_ssl.box_ops import xyxy_to_cxcywh
from detr_ssl.config import PretrainConfig
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.collate import Batch
from detr_ssl.errors import ConfigError
from detr_ssl.losses import LossOutput, build_criterion
from detr_ssl.losses.matched_features import all_layers_feature_loss
from detr_ssl.models.crops import crop_and_resize
from detr_ssl.models.deformable_detr import DeformableDETR, build_model
from detr_ssl.models.heads import MLP
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.tasks import register_task
from detr_ssl.tasks.base import PretextTask
from detr_ssl.tasks.options.updetr import UpDetrOptions


def sample_patches(sizes: Tensor, num_patches: int, min_size: int) -> list[Tensor]:
    """Random patch boxes per image: ``sizes (B, 2)`` (H, W) -> ``B`` tensors ``(num_patches, 4)``
    absolute xyxy, each side uniform in ``[min_size, image side]`` and the position uniform inside."""
    boxes = []
    for height, width in sizes.tolist():
        wh_max = torch.tensor([width, height], dtype=torch.float32)
        low = torch.minimum(torch.full((2,), float(min_size)), wh_max)
        wh = (low + torch.rand(num_patches, 2) * (wh_max - low + 1)).floor().clamp(max=wh_max)
        xy = (torch.rand(num_patches, 2) * (wh_max - wh + 1)).floor()
        boxes.append(torch.cat((xy, xy + wh), dim=1))
    return boxes


def query_groups(num_patches: int, queries_per_patch: int, shuffle: bool) -> Tensor:
    """Which patch each query serves: ``(Q,)`` in ``[0, num_patches)``; shuffled queries join random groups."""
    groups = torch.arange(num_patches).repeat_interleave(queries_per_patch)
    return groups[torch.randperm(len(groups))] if shuffle else groups


def group_attention_mask(groups: Tensor) -> Tensor:
    """``(Q, Q)`` bool, True where two queries serve different patches (attention blocked)."""
    return groups[:, None] != groups[None, :]


class UpDetrModel(nn.Module):
    """Deformable DETR + patch-feature projection (into the queries) + feature reconstruction head.

    As released: in training, each query's patch feature is left out (zeroed, no rescaling) with
    probability ``mask_ratio``; the reconstruction head is a 2-layer MLP.
    """

    def __init__(self, detector: DeformableDETR, feature_dim: int, mask_ratio: float) -> None:
        super().__init__()
        self.detector = detector
        self.mask_ratio = mask_ratio
        self.patch_projection = nn.Linear(feature_dim, detector.hidden_dim)
        self.reconstruction = MLP(detector.hidden_dim, detector.hidden_dim, feature_dim, 2)

    @torch.no_grad()
    def encode_patches(self, crops: Tensor) -> Tensor:
        """``(N, 3, S, S)`` -> ``(N, F)``: the detector's backbone (no gradient), deepest stage, global pooled."""
        return self.detector.backbone.body(crops)[-1].mean(dim=(-2, -1))

    def forward(self, images: Tensor, mask: Tensor, patch_features: Tensor, groups: Tensor
                ) -> tuple[DetectionOutput, Tensor]:
        """patch_features ``(B, P, F)``, groups ``(Q,)`` -> detections and reconstructed features
        ``(L_dec, B, Q, F)``."""
        per_query = self.patch_projection(patch_features)[:, groups]
        if self.training and self.mask_ratio > 0:
            kept = torch.rand(per_query.shape[:2], device=per_query.device) > self.mask_ratio
            per_query = per_query * kept[..., None].to(per_query.dtype)
        output = self.detector(images, mask, query_extra=per_query,
                               self_attn_mask=group_attention_mask(groups).to(images.device))
        return output, self.reconstruction(output.hidden_states)


#: The ``pretrained.pth`` entry holding what query-patch detection needs beyond the detector.
QUERY_PATCH_KEY = "query_patch"


@register_task("updetr")
class UpDetrTask(UpDetrOptions, PretextTask):
    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        """Rejects what UP-DETR cannot run: two-stage queries (the patch features are added to the learnt
        queries) and a query count that the patches do not divide evenly."""
        if config.model.two_stage:
            raise ConfigError("--task updetr adds patch features to the learnt queries, which two-stage "
                              "queries replace; drop --model.two-stage")
        queries, patches = config.model.num_queries, config.updetr.num_patches
        if patches < 1:
            raise ConfigError(f"--updetr.num-patches must be positive, got {patches}")
        if queries % patches:
            raise ConfigError(f"--task updetr splits the queries evenly among the patches: --model.num-queries "
                              f"{queries} is not a multiple of --updetr.num-patches {patches}")
        return config

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self.options = config.updetr
        #: Decoder queries per patch, as the released UP-DETR derives them (num_queries // num_patches).
        self.queries_per_patch = config.model.num_queries // config.updetr.num_patches
        self.criterion = build_criterion(1, config.loss, no_object_weight=self.options.no_object_weight)

    def build_model(self) -> UpDetrModel:
        detector = build_model(self.config.model, num_classes=1)
        feature_dim = detector.backbone.channels[-1]
        return UpDetrModel(detector, feature_dim, self.options.mask_ratio)

    def export_extras(self, model: nn.Module) -> dict[str, Any]:
        """What query-patch detection needs beyond the detector (:mod:`detr_ssl.query_patch`): the patch
        projection and how patches were fed (their side, count and queries per patch)."""
        return {QUERY_PATCH_KEY: {"patch_projection": model.patch_projection.state_dict(),
                                  "patch_size": self.options.patch_size, "num_patches": self.options.num_patches,
                                  "queries_per_patch": self.queries_per_patch}}

    def build_dataset(self, images: ImageFolderDataset, transforms) -> Dataset:
        dataset = copy.copy(images)
        dataset.transforms = transforms
        return dataset

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        opts = self.options
        sizes = torch.stack([t["size"] for t in batch.targets])
        patch_boxes = sample_patches(sizes, opts.num_patches, opts.min_patch_size)
        unwrapped = extract_model_from_parallel(model)
        crops = crop_and_resize(batch.images, [b.to(batch.images.device) for b in patch_boxes], opts.patch_size)
        features = unwrapped.encode_patches(crops).view(len(batch), opts.num_patches, -1)
        targets = [
            {"boxes": (xyxy_to_cxcywh(boxes) / boxes.new_tensor([w, h, w, h])).to(batch.images.device),
             "labels": torch.zeros(len(boxes), dtype=torch.int64, device=batch.images.device)}
            for boxes, (h, w) in zip(patch_boxes, sizes.tolist())
        ]
        groups = query_groups(opts.num_patches, self.queries_per_patch, opts.query_shuffle)
        output, reconstructed = model(batch.images, batch.mask, features, groups)
        loss = self.criterion(output, targets)
        recon, recon_terms = all_layers_feature_loss(reconstructed, list(features), loss.layer_indices,
                                                     loss.num_boxes, "normalized_mse", "loss_reconstruction")
        return replace(loss, total=loss.total + opts.reconstruction_weight * recon,
                       terms={**loss.terms, **recon_terms})

