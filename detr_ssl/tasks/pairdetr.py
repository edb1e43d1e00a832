"""Pair DETR as a pretext task (ours: the paper trains it supervised only).

Class-agnostic pseudo-boxes come from the same cached selective-search proposals as DetReg; the corner
and center decoders learn to find them as keypoint pairs, tied together by the contrastive pairing loss.
The exported checkpoint is the whole Pair DETR: its ``detector.*`` part fine-tunes as a Deformable DETR,
and all of it fine-tunes as a Pair DETR (``scripts/finetune.py --model pairdetr``).
"""

from __future__ import annotations

from torch import nn
from torch.utils.data import Dataset

from detr_ssl.config import PretrainConfig
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.collate import Batch
from detr_ssl.errors import ConfigError
from detr_ssl.losses.output import LossOutput
from detr_ssl.losses.pair_criterion import build_pair_criterion
from detr_ssl.models.pair_detr import PairDETR
from detr_ssl.proposals.options import proposal_dataset
from detr_ssl.tasks import register_task
from detr_ssl.tasks.base import PretextTask
from detr_ssl.tasks.options.pairdetr import PairDetrOptions


@register_task("pairdetr")
class PairDetrTask(PairDetrOptions, PretextTask):
    @classmethod
    def configure(cls, config: PretrainConfig) -> PretrainConfig:
        """Rejects two-stage queries, which Pair DETR's learnt corner and center queries cannot be."""
        if config.model.two_stage:
            raise ConfigError("--task pairdetr learns its corner and center queries and cannot take two-stage "
                              "queries; drop --model.two-stage")
        return config

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self.criterion = build_pair_criterion(1, config.loss, config.pair.temperature, config.pair.pair_weight)

    def build_model(self) -> PairDETR:
        return PairDETR(self.config.model, num_classes=1, embed_dim=self.config.pair.embed_dim)

    def build_dataset(self, images: ImageFolderDataset, transforms) -> Dataset:
        return proposal_dataset(self.config.proposals, self.config.run.output_dir, images, transforms)

    def compute_loss(self, model: nn.Module, batch: Batch) -> LossOutput:
        return self.criterion(model(batch.images, batch.mask), batch.targets)

    @staticmethod
    def exported(model: nn.Module) -> nn.Module:
        return model
