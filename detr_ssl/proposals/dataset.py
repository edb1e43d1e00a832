"""Unlabelled images with their proposals as class-agnostic box targets (DetReg, Pair DETR pretraining)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detr_ssl.datasets.coco import Transform, make_target
from detr_ssl.datasets.unlabeled import ImageFolderDataset
from detr_ssl.proposals.provider import ProposalProvider

__all__ = ["ProposalDataset"]


class ProposalDataset(Dataset):
    """Items ``(image, target)`` whose boxes are the image's proposals, all labelled 0.

    The target follows the library contract (docs/ARCHITECTURE.md): ``boxes`` float ``(k, 4)`` cxcywh
    normalised by the image size, ``labels`` int64 zeros ``(k,)``, ``image_id``, ``orig_size``, ``size``.
    ``k`` may be 0. ``transforms`` run after the boxes are attached, so the boxes follow flips and crops.

    Args:
        images: the images, built *without* transforms (proposals are computed on the image as on disk).
        provider: gives each image's proposals (cached or computed).
        transforms: detection transforms applied to ``(PIL image, target)``.
    """

    def __init__(
        self, images: ImageFolderDataset, provider: ProposalProvider, transforms: Transform | None = None
    ) -> None:
        if images.transforms is not None:
            raise ValueError(
                "build the ImageFolderDataset without transforms and pass them to ProposalDataset, "
                "so that they also move the proposal boxes"
            )
        self.images = images
        self.provider = provider
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        image, empty_target = self.images[index]
        boxes = self.provider.boxes(self.images.image_paths[index], image)
        labels = np.zeros(len(boxes), dtype=np.int64)
        target = make_target(boxes, labels, int(empty_target["image_id"]), image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
