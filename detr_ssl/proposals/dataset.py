"""Unlabelled images with their proposals as class-agnostic box targets (DetReg, Pair DETR pretraining)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from detr_ssl.datasets.coco import Transform, make_target
from detr_ssl.datasets.unlabeled import ImageFolderDataset
from detr_ssl.errors import DataError
from detr_ssl.models.crops import crop_and_resize
from detr_ssl.proposals.provider import ProposalProvider

__all__ = ["ProposalDataset", "proposal_crops"]


def proposal_crops(image: Image.Image, boxes_xyxy: np.ndarray, size: int) -> torch.Tensor:
    """Each box of ``image`` cut out and resized to ``size`` squared: uint8 ``(k, 3, size, size)``.

    As DetReg's released code cuts its teacher crops: from the image as loaded (before any augmentation),
    box corners rounded to whole pixels (as PIL's ``crop`` rounds them), resized with averaging over the
    box's footprint when shrinking and bilinear interpolation when enlarging (one ``roi_align`` call for all
    boxes, close to PIL's antialiased bilinear resize), kept as 8-bit pixels like PIL's.
    """
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()
    corners = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4).round()
    crops = crop_and_resize(pixels[None], [corners], size)
    return crops.round_().clamp_(0, 255).to(torch.uint8)


class ProposalDataset(Dataset):
    """Items ``(image, target)`` whose boxes are the image's proposals, all labelled 0.

    The target follows the library contract (docs/ARCHITECTURE.md): ``boxes`` float ``(k, 4)`` cxcywh
    normalised by the image size, ``labels`` int64 zeros ``(k,)``, ``image_id``, ``orig_size``, ``size``;
    with ``crop_size``, also ``crops`` uint8 ``(k, 3, S, S)``: each proposal cut from the image *before*
    the transforms (see :func:`proposal_crops`). ``transforms`` run after the boxes are attached, so the
    boxes follow flips and crops, and a box a crop removes takes its ``crops`` row with it.

    Like DetReg's released loader, an image left with fewer than ``min_boxes`` proposals (by selective
    search, or after the transforms) is replaced by another image drawn at random.

    Args:
        images: the images, built *without* transforms (proposals are computed on the image as on disk).
        provider: gives each image's proposals (cached or computed); several providers (e.g. the same
            settings with different seeds) give each load a proposal set drawn from one of them at random,
            as the released DetReg, which reruns selective search at every load, gets a new draw each time.
        transforms: detection transforms applied to ``(PIL image, target)``.
        crop_size: add the ``crops`` of every proposal at this side; None: no crops.
        min_boxes: fewest proposals an item may have (0 keeps every image).
        max_draws: images tried for one item before giving up with a DataError.
    """

    def __init__(
        self,
        images: ImageFolderDataset,
        provider: ProposalProvider | Sequence[ProposalProvider],
        transforms: Transform | None = None,
        *,
        crop_size: int | None = None,
        min_boxes: int = 0,
        max_draws: int = 100,
    ) -> None:
        if images.transforms is not None:
            raise ValueError(
                "build the ImageFolderDataset without transforms and pass them to ProposalDataset, "
                "so that they also move the proposal boxes"
            )
        self.images = images
        self.providers = [provider] if isinstance(provider, ProposalProvider) else list(provider)
        if not self.providers:
            raise ValueError("ProposalDataset needs at least one proposal provider")
        self.transforms = transforms
        self.crop_size = crop_size
        self.min_boxes = min_boxes
        self.max_draws = max_draws

    @property
    def provider(self) -> ProposalProvider:
        """The first (or only) provider."""
        return self.providers[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        for _ in range(self.max_draws):
            item = self._load(index)
            if item is not None:
                return item
            index = int(torch.randint(len(self), ()))
        raise DataError(f"{self.images.image_paths[index]}: {self.max_draws} images drawn in a row had fewer "
                        f"than {self.min_boxes} box proposals (after augmentation); check the images")

    def _load(self, index: int) -> tuple[Any, dict[str, torch.Tensor]] | None:
        image, empty_target = self.images[index]
        provider = self.providers[int(torch.randint(len(self.providers), ()))] if len(self.providers) > 1 \
            else self.providers[0]
        boxes = provider.boxes(self.images.image_paths[index], image)
        if len(boxes) < self.min_boxes:
            return None
        labels = np.zeros(len(boxes), dtype=np.int64)
        target = make_target(boxes, labels, int(empty_target["image_id"]), image)
        if self.crop_size is not None:
            target["crops"] = proposal_crops(image, boxes, self.crop_size)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if len(target["boxes"]) < self.min_boxes:
            return None
        return image, target
