"""Multi-crop views of unlabeled images for backbone self-supervision (SwAV, DenseCL, the dense pretexts).

Each sample is a list of augmented crops of one image: ``num_global`` large random-resized crops
followed by ``num_local`` small ones (SwAV's multi-crop). Every crop, global or local, gets what the
released SwAV code (``src/multicropdataset.py``) gives it: random resized crop, horizontal flip (p 0.5),
colour distortion of strength 1 (ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, then grayscale with p 0.2),
PIL Gaussian blur with p 0.5 and sigma uniform in [0.1, 2], ImageNet normalisation. All randomness comes
from torch's generator, so the engine's per-sample seeding makes the views reproducible across restarts.
Every view records where it came from (its crop box in the original image and whether it was flipped), so
dense pretexts can find which locations of two views show the same point of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from detr_ssl.datasets.crop_augment import BLUR_SIGMA
from detr_ssl.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BLUR_SIGMA", "CropSpec", "MultiCropDataset", "PilGaussianBlur", "View", "ViewGeometry",
           "ViewTransform", "Views", "collate_views"]


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
    jitter: tuple[float, float, float, float] | None = None
    """ColorJitter (brightness, contrast, saturation, hue) given outright, replacing the one of
    ``color_strength`` (BYOL's views: (0.4, 0.4, 0.2, 0.1))."""
    solarize_probability: float = 0.0
    """Chance of PIL's solarize (threshold 128) after the blur (BYOL's second view: 0.2)."""

    @property
    def color_jitter(self) -> tuple[float, float, float, float]:
        s = self.color_strength
        return self.jitter if self.jitter is not None else (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)


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


class View(NamedTuple):
    """One augmented view of one image and where it came from."""

    image: Tensor
    """Normalised ``(3, size, size)``."""
    box: Tensor
    """float ``(4,)``: the crop ``(x0, y0, x1, y1)`` in pixels of the original image (columns x0 .. x1 - 1)."""
    flipped: bool
    """Whether the crop was mirrored left-right after cropping (view column 0 is then the crop's right edge)."""
    image_size: Tensor
    """int64 ``(2,)``: (height, width) of the original image."""


class ViewTransform:
    """PIL image -> a random :class:`View`: random resized crop, horizontal flip (p 0.5), then
    :attr:`photometric` (colour, greyscale, blur, normalisation). The crop and flip draw torch's generator in
    the order torchvision's RandomResizedCrop and RandomHorizontalFlip do."""

    ratio = (3 / 4, 4 / 3)

    def __init__(self, spec: CropSpec) -> None:
        self.spec = spec
        # A solarize step only when used: RandomApply draws a random number even at p = 0.
        solarize = [T.RandomApply([ImageOps.solarize], p=spec.solarize_probability)] if spec.solarize_probability else []
        self.photometric = T.Compose([
            T.RandomApply([T.ColorJitter(*spec.color_jitter)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PilGaussianBlur()], p=spec.blur_probability),
            *solarize,
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __call__(self, image: Image.Image) -> View:
        top, left, height, width = T.RandomResizedCrop.get_params(image, list(self.spec.scale), list(self.ratio))
        size = [self.spec.size, self.spec.size]
        crop = TF.resized_crop(image, top, left, height, width, size, T.InterpolationMode.BILINEAR, antialias=True)
        flipped = bool(torch.rand(1) < 0.5)
        if flipped:
            crop = TF.hflip(crop)
        box = torch.tensor([left, top, left + width, top + height], dtype=torch.float32)
        return View(self.photometric(crop), box, flipped, torch.tensor([image.height, image.width]))


class MultiCropDataset(Dataset):
    """Wraps a dataset of ``(PIL image, target)`` (targets ignored) into lists of views, one per spec."""

    def __init__(self, images: Dataset, specs: Sequence[CropSpec]) -> None:
        if not specs:
            raise ValueError("MultiCropDataset needs at least one crop spec")
        self.images = images
        self.specs = tuple(specs)
        self._transforms = [ViewTransform(spec) for spec in self.specs]

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> list[View]:
        image, _ = self.images[index]
        return [transform(image) for transform in self._transforms]


@dataclass
class ViewGeometry:
    """Where view ``v`` of every image of a batch came from (see :class:`View`): ``boxes`` float ``(B, 4)``
    crop boxes in original-image pixels, ``flipped`` bool ``(B,)``, ``image_sizes`` int64 ``(B, 2)``
    (height, width) of the originals. The view's own size is its tensor's."""

    boxes: Tensor
    flipped: Tensor
    image_sizes: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewGeometry:
        return ViewGeometry(*(t.to(device, non_blocking=non_blocking) for t in (self.boxes, self.flipped,
                                                                               self.image_sizes)))


@dataclass
class Views:
    """A batch of views: ``crops[v]`` is ``(B, 3, S_v, S_v)``, view ``v`` of every image; ``geometry[v]``
    where each came from (empty for views made without it, e.g. in tests of a loss)."""

    crops: list[Tensor]
    geometry: list[ViewGeometry] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Views:
        return Views([crop.to(device, non_blocking=non_blocking) for crop in self.crops],
                     [geometry.to(device, non_blocking=non_blocking) for geometry in self.geometry])

    def __len__(self) -> int:
        return self.crops[0].shape[0]


def collate_views(samples: Sequence[Sequence[View]]) -> Views:
    """Stacks per-image view lists into one tensor (and one :class:`ViewGeometry`) per view."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    per_view = list(zip(*samples))
    crops = [torch.stack([view.image for view in views]) for views in per_view]
    geometry = [ViewGeometry(torch.stack([view.box for view in views]),
                             torch.tensor([view.flipped for view in views]),
                             torch.stack([view.image_size for view in views])) for views in per_view]
    return Views(crops, geometry)
