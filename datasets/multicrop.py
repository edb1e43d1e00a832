"""Multi-crop views of unlabeled images for backbone self-supervision (SwAV, DenseCL).

Each sample is a list of augmented crops of one image: ``num_global`` large random-resized crops
followed by ``num_local`` small ones (SwAV's multi-crop). The augmentations are the usual SimCLR /
SwAV set: random resized crop, horizontal flip, colour jitter, random grayscale, Gaussian blur on
the global views. All randomness comes from torch's generator, so the engine's per-sample seeding
makes the views reproducible across restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from detr_ssl.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CropSpec", "MultiCropDataset", "Views", "collate_views", "view_transform"]


@dataclass(frozen=True)
class CropSpec:
    """One kind of view: output side, area range (fraction of the image) and whether it is blurred."""

    size: int
    scale: tuple[float, float]
    blur: bool


def view_transform(spec: CropSpec) -> T.Compose:
    """PIL image -> normalised ``(3, size, size)`` tensor for one random view."""
    steps: list = [
        T.RandomResizedCrop(spec.size, scale=spec.scale, antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if spec.blur:
        # Kernel about a tenth of the crop side, odd, as in SimCLR.
        steps.append(T.RandomApply([T.GaussianBlur(spec.size // 10 * 2 + 1, sigma=(0.1, 2.0))], p=0.5))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)


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
