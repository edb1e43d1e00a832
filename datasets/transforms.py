"""Detection-aware transforms: each one changes the image and keeps the boxes on the same pixels.

Box convention: every transform receives and returns targets in the library contract
(docs/ARCHITECTURE.md): ``boxes`` are ``(cx, cy, w, h)`` normalised by the *current* image size, and
``size`` is that size ``(H, W)``. So transforms compose in any order, a pipeline without `Normalize` still
yields valid targets, and resizing never touches the boxes (normalised coordinates are scale-invariant).
Only flipping and cropping move boxes. `Normalize` changes pixel values only.

Per-box fields: besides ``boxes``, every target entry other than ``image_id``, ``orig_size`` and ``size`` is
taken to have one row per box (``labels``, or e.g. proposal scores a task adds); cropping drops the rows of
boxes that vanish from all of them together.

Randomness comes from torch's global generator only, so ``torch.manual_seed`` reproduces an augmentation.
Images may be PIL images or ``(C, H, W)`` tensors until `ToTensor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor

from detr_ssl.box_ops import cxcywh_to_xyxy, xyxy_to_cxcywh
from detr_ssl.datasets.sizes import PAPER_CROP, PAPER_EVAL_SIZE, PAPER_MAX_SIZE, PAPER_TRAIN_SCALES

__all__ = [
    "Compose",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomSizeCrop",
    "RandomSelect",
    "ToTensor",
    "Normalize",
    "make_train_transforms",
    "make_eval_transforms",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRE_CROP_MAX_SIZE_FACTOR",
]

Target = dict[str, Tensor]
ImageLike = Any  # PIL.Image.Image or a (C, H, W) tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The resize before the crop caps the long side at this many times ``max_size``. The paper's recipe has
#: no cap there; with one this loose only aspect ratios above ~4.4:1 (paper sizes) are affected, and an
#: uncapped resize turned a 4000x2-pixel strip into 600x1,200,000 pixels (3.4 GB in a loader worker).
PRE_CROP_MAX_SIZE_FACTOR = 2

_IMAGE_LEVEL_KEYS = frozenset({"image_id", "orig_size", "size"})
#: Crop remainders thinner than this (pixels) count as vanished; it only absorbs float round-off.
_MIN_VISIBLE_PIXELS = 1e-3


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        if torch.rand(()).item() >= self.p:
            return image, target
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, 0] = 1.0 - boxes[:, 0]
        target["boxes"] = boxes
        return F.hflip(image), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResize:
    """Resize so the short side is one of ``sizes`` (drawn uniformly), keeping the aspect ratio.

    If the long side would then exceed ``max_size``, the image is scaled down so that it equals
    ``max_size`` instead (the short side ends up below the drawn size). A single size draws nothing,
    so ``RandomResize([800], 1333)`` is the deterministic evaluation resize.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"sizes must be a non-empty list of positive integers, got {sizes!r}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        short = self.sizes[0] if len(self.sizes) == 1 else self.sizes[_randint(0, len(self.sizes) - 1)]
        height, width = _size_hw(image)
        new_hw = _resized_hw(height, width, short, self.max_size)
        if new_hw == (height, width):
            return image, target
        target = dict(target)
        target["size"] = torch.tensor(new_hw, dtype=torch.int64)
        return F.resize(image, list(new_hw), antialias=True), target

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


class RandomSizeCrop:
    """Crop a window of random width and height in ``[min_size, max_size]`` (limited by the image).

    Boxes are clipped to the window; boxes left with no area are dropped with all their per-box fields.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        height, width = _size_hw(image)
        crop_w = _randint(min(self.min_size, width), min(self.max_size, width))
        crop_h = _randint(min(self.min_size, height), min(self.max_size, height))
        top = _randint(0, height - crop_h)
        left = _randint(0, width - crop_w)
        return _crop(image, target, top, left, crop_h, crop_w)

    def __repr__(self) -> str:
        return f"RandomSizeCrop(min_size={self.min_size}, max_size={self.max_size})"


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second``."""

    def __init__(self, first: Any, second: Any, p: float = 0.5) -> None:
        self.first = first
        self.second = second
        self.p = p

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        chosen = self.first if torch.rand(()).item() < self.p else self.second
        return chosen(image, target)

    def __repr__(self) -> str:
        return f"RandomSelect({self.first!r}, {self.second!r}, p={self.p})"


class ToTensor:
    """PIL image -> float ``(3, H, W)`` tensor in ``[0, 1]``."""

    def __call__(self, image: ImageLike, target: Target) -> tuple[Tensor, Target]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"ToTensor expects a PIL image, got {type(image).__name__}")
        return F.to_tensor(image), target

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """Standardise the channels of a float image tensor (ImageNet statistics by default). Boxes unchanged."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        return F.normalize(image, self.mean, self.std), target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def make_train_transforms(
    scales: Sequence[int] = PAPER_TRAIN_SCALES,
    max_size: int = PAPER_MAX_SIZE,
    crop: tuple[int, int] | None = PAPER_CROP,
    *,
    pre_crop_sizes: Sequence[int] | None = None,
) -> Compose:
    """The DETR training augmentation: flip, then either a multi-scale resize or resize-crop-resize.

    Args:
        scales: short-side choices of the final resize.
        max_size: cap on the long side.
        crop: ``(min, max)`` side of the random crop; None disables the crop branch.
        pre_crop_sizes: short-side choices of the resize before cropping. Default: ``crop[1]`` times
            2/3, 5/6 and 1, which gives the paper's 400, 500, 600 for a 384-600 crop. Its long side is
            capped at `PRE_CROP_MAX_SIZE_FACTOR` x ``max_size`` (extreme aspect ratios only).
    """
    resize = RandomResize(scales, max_size)
    if crop is None:
        geometric: Any = resize
    else:
        if pre_crop_sizes is None:
            pre_crop_sizes = [round(crop[1] * f) for f in (2 / 3, 5 / 6, 1.0)]
        pre_crop = RandomResize(pre_crop_sizes, PRE_CROP_MAX_SIZE_FACTOR * max_size)
        resize_crop = Compose([pre_crop, RandomSizeCrop(*crop), RandomResize(scales, max_size)])
        geometric = RandomSelect(resize, resize_crop)
    return Compose([RandomHorizontalFlip(), geometric, ToTensor(), Normalize()])


def make_eval_transforms(size: int = PAPER_EVAL_SIZE, max_size: int = PAPER_MAX_SIZE) -> Compose:
    """Deterministic evaluation pipeline: resize (short side ``size``, long side <= ``max_size``), normalise."""
    return Compose([RandomResize([size], max_size), ToTensor(), Normalize()])


def _crop(image: ImageLike, target: Target, top: int, left: int, height: int, width: int) -> tuple[ImageLike, Target]:
    """Cut the window ``[top, top + height) x [left, left + width)`` out of the image and fix the target."""
    old_h, old_w = _size_hw(image)
    target = dict(target)
    boxes = cxcywh_to_xyxy(target["boxes"]) * torch.tensor([old_w, old_h, old_w, old_h], dtype=torch.float32)
    boxes = boxes - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    sides = boxes[:, 2:] - boxes[:, :2]
    keep = (sides > _MIN_VISIBLE_PIXELS).all(dim=1)
    num_boxes = boxes.shape[0]
    for key, value in target.items():
        if key not in _IMAGE_LEVEL_KEYS and key != "boxes":
            if value.shape[:1] != (num_boxes,):
                raise ValueError(f"target[{key!r}] has {tuple(value.shape)} rows, expected one per box ({num_boxes})")
            target[key] = value[keep]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    target["boxes"] = xyxy_to_cxcywh(boxes[keep] / scale)
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    return F.crop(image, top, left, height, width), target


def _resized_hw(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """Output ``(H, W)`` with the short side at ``short_side``, the long side capped at ``max_size``."""
    scale = short_side / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _size_hw(image: ImageLike) -> tuple[int, int]:
    _, height, width = F.get_dimensions(image)
    return height, width


def _randint(low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (inclusive) from torch's global generator."""
    return int(torch.randint(low, high + 1, ()).item())
