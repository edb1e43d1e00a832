"""Batched region crops: every box of a padded batch cropped and resized to ``S x S`` in one op call.

UP-DETR (random patches) and DetReg (proposals) both encode image regions with a frozen network; cropping
them one by one in Python is the slow part of that path, so all crops of a batch go through a single
``torchvision.ops.roi_align`` call instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align

from detr_ssl.box_ops import cxcywh_to_xyxy

__all__ = ["crop_and_resize", "normalized_cxcywh_to_abs_xyxy"]


def normalized_cxcywh_to_abs_xyxy(boxes: Tensor, size: Tensor | Sequence[int]) -> Tensor:
    """Library boxes -> pixel corners: ``(k, 4)`` cxcywh normalised by ``size = (H, W)`` -> ``(k, 4)`` xyxy pixels.

    ``size`` is the image's ``target["size"]`` (its unpadded, transformed size); since a batch is padded at
    the bottom/right only, the result is also in the padded batch's pixel coordinates.

    >>> normalized_cxcywh_to_abs_xyxy(torch.tensor([[0.5, 0.5, 0.5, 1.0]]), (20, 40))
    tensor([[10.,  0., 30., 20.]])
    """
    height, width = (float(v) for v in size)
    scale = boxes.new_tensor([width, height, width, height])
    return cxcywh_to_xyxy(boxes) * scale


def crop_and_resize(
    images: Tensor, boxes: Sequence[Tensor], output_size: int = 128, sampling_ratio: int = 0
) -> Tensor:
    """Crops each box out of its image and resizes it to ``output_size`` squared.

    Args:
        images: ``(B, 3, H, W)`` normalised, padded batch.
        boxes: ``B`` tensors ``(k_i, 4)``, absolute xyxy pixels (a pixel ``(x, y)`` spans
            ``[x, x + 1) x [y, y + 1)``); ``k_i`` may be 0.
        output_size: side ``S`` of the square crops.
        sampling_ratio: bilinear taps per output pixel along each axis; the default 0 adapts it per box to
            ``ceil(box side / S)``, so a box smaller than ``S`` is bilinearly enlarged and a larger box is
            averaged over its whole footprint (an anti-aliased shrink, like resizing a cropped image).

    Returns:
        ``(sum k_i, 3, S, S)`` crops in image order, then box order within an image. Sample points that
        fall outside the image read zeros (the dataset mean colour, once normalised).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if len(boxes) != images.shape[0]:
        raise ValueError(f"got {len(boxes)} box tensors for a batch of {images.shape[0]} images")
    for index, image_boxes in enumerate(boxes):
        if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
            raise ValueError(f"boxes[{index}] must be (k, 4), got shape {tuple(image_boxes.shape)}")
    counts = torch.tensor([len(b) for b in boxes], device=images.device)
    batch_index = torch.repeat_interleave(torch.arange(len(boxes), device=images.device), counts)
    corners = [b.to(device=images.device, dtype=images.dtype) for b in boxes]
    rois = torch.cat((batch_index[:, None].to(images.dtype), torch.cat(corners or [images.new_zeros(0, 4)])), dim=1)
    # aligned=True: box coordinates are continuous pixel edges, not pixel centres.
    return roi_align(images, rois, output_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True)
