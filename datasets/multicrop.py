"""Multi-crop views of unlabeled images for backbone self-supervision (SwAV, DenseCL).

Each sample is a list of augmented crops of one image: ``num_global`` large random-resized crops
followed by ``num_local`` small ones (SwAV's multi-crop). Every crop, global or local, gets what the
released SwAV code (``src/multicropdataset.py``) gives it: random resized crop, horizontal flip (p 0.5),
colour distortion of strength 1 (ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, then grayscale with p 0.2),
PIL Gaussian blur with p 0.5 and sigma uniform in [0.1, 2], ImageNet normalisation. All randomness comes
from torch's generator, so the engine's per-sample seeding makes the views reproducible across restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from detr_ssl.datasets.crop_augment import BLUR_SIGMA
from detr_ssl.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BLUR_SIGMA", "CropSpec", "MultiCropDataset", "PilGaussianBlur", "Views", "collate_views",
           "view_transform"]


@dataclass(frozen=True)
class CropSpec:
    """One kind of view: output side, area range (fraction of the image) and its colour and blur
    augmentation. The defaults are the released SwAV's, the same for global and local crops."""

    size: int
    scale: tuple[float, float]
    color_strength: float = 1.0
    """Colour distortion strength s: ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) applied with probability 0.8
    (SwAV: 1.0; MoCo v2 and DenseCL: 0.5), then grayscale with probability 0.2."""
    blur_probability: float = 0.5
    """Chance of a Gaussian blur with sigma uniform in BLUR_SIGMA (SwAV: 0.5 on every crop)."""


class PilGaussianBlur:
    """Blurs a PIL image with PIL's Gaussian filter, sigma drawn uniformly from ``sigma`` with torch's
    generator. PIL's filter is not cut at a kernel size, so small crops are blurred as much as large ones."""

    def __init__(self, sigma: tuple[float, float] = BLUR_SIGMA) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        low, high = self.sigma
        sigma = low + (high - low) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


def view_transform(spec: CropSpec) -> T.Compose:
    """PIL image -> normalised ``(3, size, size)`` tensor for one random view."""
    s = spec.color_strength
    return T.Compose([
        T.RandomResizedCrop(spec.size, scale=spec.scale, antialias=True),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PilGaussianBlur()], p=spec.blur_probability),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class MultiCropDataset(Dataset):
    """Wraps a dataset of ``(PIL image, target)`` (targets ignored) into lists of views, one per spec."""

    def __init__(self, images: Dataset, specs: Sequence[CropSpec]) -> None:
        if not specs:
            raise ValueError("MultiCropDataset needs at least one crop spec")
        self.images = images
        self.specs = tuple(specs)
        self._transforms = [view_transform(spec) for spec in self.specs]

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> list[Tensor]:
        image, _ = self.images[index]
        return [transform(image) for transform in self._transforms]


@dataclass
class Views:
    """A batch of views: ``crops[v]`` is ``(B, 3, S_v, S_v)``, view ``v`` of every image."""

    crops: list[Tensor]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Views:
        return Views([crop.to(device, non_blocking=non_blocking) for crop in self.crops])

    def __len__(self) -> int:
        return self.crops[0].shape[0]


def collate_views(samples: Sequence[Sequence[Tensor]]) -> Views:
    """Stacks per-image view lists into one tensor per view."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    return Views([torch.stack(views) for views in zip(*samples)])
