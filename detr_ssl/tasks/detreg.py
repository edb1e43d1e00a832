"""DetReg: region proposals as pseudo-boxes + object embeddings from a frozen teacher (Bar et al., CVPR 2022).

As the released code (amirbar/DETReg) trains it: targets per image are the first ``top_k`` selective-search
boxes (class-agnostic). Each box is cut from the image *before* the detection augmentation, resized,
augmented on its own (colour jitter, greyscale, blur) and embedded by a frozen teacher (SwAV ResNet-50,
layer2, spatial mean: 512-d). A 2-layer MLP on the last decoder layer predicts the embedding of the
proposal its query matched, trained with L1 (mean over matched queries and dimensions) next to the usual
set loss. docs/PROTOCOLS.md lists where we differ and the options that choose.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from detr_ssl.config import PretrainConfig
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.collate import Batch
from detr_ssl.datasets.crop_augment import CropAugmentation
from detr_ssl.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from detr_ssl.errors import ConfigError
from detr_ssl.losses import LossOutput, SetCriterion, build_criterion
from detr_ssl.losses.matched_features import all_layers_feature_loss
from detr_ssl.models.deformable_detr import DeformableDETR, build_model
from detr_ssl.models.heads import MLP
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.models.teachers import FrozenEncoder, build_teacher
from detr_ssl.proposals.options import proposal_dataset
from detr_ssl.tasks import register_task
from detr_ssl.tasks.base import PretextTask
from detr_ssl.tasks.options.detreg import DetRegOptions


class DetRegModel(nn.Module):
    """Deformable DETR + the object-embedding head (released: ``feature_embed``) on the decoder's output."""

    def __init__(self, detector: DeformableDETR, embedding_dim: int) -> None:
        super().__init__()
        self.detector = detector
        self.embedding_head = MLP(detector.hidden_dim, detector.hidden_dim, embedding_dim, 2)

    def forward(self, images: Tensor, mask: Tensor) -> tuple[DetectionOutput, Tensor]:
        """-> detections and embeddings ``(L_dec, B, Q, E)`` of every decoder layer."""
        output = self.detector(images, mask)
        return output, self.embedding_head(output.hidden_states)


def detreg_loss(criterion: SetCriterion, output: DetectionOutput, predicted_embeddings: Tensor,
                targets: list[dict[str, Tensor]], target_embeddings: list[Tensor],
                embedding_layers: Literal["last", "all"] = "last", embedding_weight: float = 1.0) -> LossOutput:
    """The set loss of ``output`` plus the object-embedding loss on matched queries.

    Args:
        predicted_embeddings: ``(L_dec, B, Q, E)``, every decoder layer's predictions.
        target_embeddings: per image ``(K_i, E)``, the teacher embedding of each target box.
        embedding_layers: ``"last"`` puts the embedding loss on the final layer only (released);
            ``"all"`` on every decoder layer, each with its own matching.
    Returns:
        the criterion's output with ``total`` += weight x embedding loss and ``loss_embedding[_i]`` terms.
        Each layer's term is the L1 difference averaged over its matched queries and the embedding
        dimensions (the released reduction; 0 when nothing is matched).
    """
    loss = criterion(output, targets)
    # all_layers_feature_loss skips the two-stage encoder's "_enc" entry itself.
    layers = {suffix: indices for suffix, indices in loss.layer_indices.items()
              if embedding_layers == "all" or suffix == ""}
    embed, embed_terms = all_layers_feature_loss(predicted_embeddings, target_embeddings, layers, None, "l1",
                                                 "loss_embedding")
    return replace(loss, total=loss.total + embedding_weight * embed, terms={**loss.terms, **embed_terms})


@register_task("detreg")
class DetRegTask(DetRegOptions, PretextTask):
    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        """The paper preset trains against real weights, never a random network."""
        if config.detreg.num_classes < 1:
            raise ConfigError(f"--num-classes must be at least 1, got {config.detreg.num_classes}")
        if config.preset == "paper":
            missing = [flag for flag, value in (("--teacher-checkpoint", config.detreg.teacher_checkpoint),
                                                ("--backbone-init", config.model.backbone_weights)) if value is None]
            if missing:
                raise ConfigError(f"DetReg's paper preset needs the SwAV ResNet-50 as teacher and backbone: give "
                                  f"{' and '.join(missing)} (e.g. swav_800ep_pretrain.pth.tar), or --preset demo")
        return config

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self.options = config.detreg
        self.criterion = build_criterion(self.options.num_classes, config.loss)
        #: Pseudo-boxes are class 0 of a one-logit head, class 1 of the released 91-logit head.
        self.pseudo_label = 0 if self.options.num_classes == 1 else 1
        self.teacher: FrozenEncoder | None = None
        self.augment = CropAugmentation() if self.options.teacher_augment else None

    def build_model(self) -> DetRegModel:
        detector = build_model(self.config.model, num_classes=self.options.num_classes)
        self.teacher = build_teacher(self.options.teacher_checkpoint, self.options.teacher_arch,
                                     self.options.teacher_stage, fallback=detector.backbone)
        return DetRegModel(detector, self.teacher.dim)

    def build_dataset(self, images: ImageFolderDataset, transforms) -> Dataset:
        return proposal_dataset(self.config.proposals, self.config.run.output_dir, images, transforms,
                                crop_size=self.options.crop_size)

    def teacher_inputs(self, batch: Batch) -> Tensor:
        """Every target's crop (the dataset's uint8 ``crops``), augmented and normalised: ``(sum K_i, 3, S, S)``."""
        crops = torch.cat([target["crops"] for target in batch.targets]).to(batch.images.dtype).div_(255)
        if self.augment is not None:
            crops = self.augment(crops)
        mean, std = (crops.new_tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        return (crops - mean) / std

    def teacher_embeddings(self, batch: Batch) -> list[Tensor]:
        """Per image ``(K_i, E)``: the frozen teacher's embedding of each target box."""
        if self.teacher is None:
            raise RuntimeError("build_model() creates the teacher; call it before training")
        self.teacher.to(batch.images.device)
        embeddings = self.teacher(self.teacher_inputs(batch))
        return list(embeddings.split([len(target["boxes"]) for target in batch.targets]))

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        embeddings = self.teacher_embeddings(batch)
        output, predicted = model(batch.images, batch.mask)
        targets = [{**target, "labels": torch.full_like(target["labels"], self.pseudo_label)}
                   for target in batch.targets]
        return detreg_loss(self.criterion, output, predicted, targets, embeddings,
                           self.options.embedding_layers, self.options.embedding_weight)
