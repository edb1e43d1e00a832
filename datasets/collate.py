"""Batch images of different sizes: zero-pad at the bottom/right and record where the padding is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Batch", "collate_detection"]


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        images: ``(B, 3, H, W)`` float, each image at the top-left, zeros below and to the right of it.
        mask: ``(B, H, W)`` bool, True on padding pixels.
        targets: one target dict per image (docs/ARCHITECTURE.md); boxes are normalised by each image's
            own unpadded ``size``, not by the padded ``(H, W)``.
    """

    images: Tensor
    mask: Tensor
    targets: list[dict[str, Tensor]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy on ``device``, target tensors included (Accelerate calls this when it places batches)."""
        return Batch(
            images=self.images.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            targets=[{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in self.targets],
        )

    def __len__(self) -> int:
        return self.images.shape[0]


def collate_detection(samples: Sequence[tuple[Tensor, dict[str, Tensor]]], pad_to_multiple: int = 1) -> Batch:
    """Stack ``(image (3, h, w), target)`` samples into a `Batch`.

    The padded size is the largest height and width in the batch, rounded up to a multiple of
    ``pad_to_multiple`` (e.g. the backbone stride; use ``functools.partial`` for a DataLoader).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    images = [image for image, _ in samples]
    for image in images:
        if not isinstance(image, Tensor) or image.dim() != 3:
            kind = type(image).__name__ if not isinstance(image, Tensor) else f"tensor of shape {tuple(image.shape)}"
            raise TypeError(f"collate_detection expects (C, H, W) image tensors (did you forget ToTensor?), got {kind}")
    channels = {image.shape[0] for image in images}
    if len(channels) != 1:
        raise ValueError(f"images in a batch must have the same number of channels, got {sorted(channels)}")
    height = _round_up(max(image.shape[1] for image in images), pad_to_multiple)
    width = _round_up(max(image.shape[2] for image in images), pad_to_multiple)
    first = images[0]
    padded = first.new_zeros((len(images), first.shape[0], height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=first.device)
    for i, image in enumerate(images):
        _, h, w = image.shape
        padded[i, :, :h, :w] = image
        mask[i, :h, :w] = False
    return Batch(images=padded, mask=mask, targets=[target for _, target in samples])


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
