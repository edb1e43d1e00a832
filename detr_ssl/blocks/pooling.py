"""Pooling a feature map over regions: soft or binary masks (DenseSiam, LC-loss) and boxes (region-level
contrast on the overlap of two views; object boxes from a pyramid's levels, CCOP)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["MASK_EPS", "masked_average_pool", "multilevel_roi_align", "roi_align_boxes", "roi_align_pool"]

MASK_EPS = 1e-6
"""Smallest mask total divided by: a mask summing to less (an empty mask) gives (nearly) a zero vector
instead of NaN, while any mask covering at least one full pixel is averaged exactly."""


def masked_average_pool(features: Tensor, masks: Tensor) -> Tensor:
    """``(B, N, C)`` mask-weighted mean of the features under each of ``N`` masks per image:
    ``sum(mask * feature) / max(sum(mask), MASK_EPS)``.

    Args:
        features: ``(B, C, H, W)`` feature maps.
        masks: ``(B, N, H, W)`` non-negative weights (binary or soft) on the same grid.
    """
    totals = masks.sum(dim=(2, 3)).clamp_min(MASK_EPS)
    return torch.einsum("bnhw,bchw->bnc", masks, features) / totals.unsqueeze(-1)


def roi_align_boxes(
    features: Tensor,
    boxes: Tensor,
    image_index: Tensor,
    output_size: int | tuple[int, int],
    image_size: tuple[int, int],
    sampling_ratio: int = -1,
) -> Tensor:
    """``(M, C, oh, ow)`` RoIAlign of ``M`` boxes, box ``m`` from the map of image ``image_index[m]``, the
    boxes given in the view's pixels.

    Boxes are scaled to the feature grid per axis (feature size / ``image_size``, so a grid whose stride
    differs in x and y is still right) and pooled with ``aligned=True``: a pixel box ``(0, 0, W, H)`` then
    covers exactly the feature map, cell centres at integer positions.

    Args:
        features: ``(B, C, Hf, Wf)`` feature maps of views of ``image_size``.
        boxes: ``(M, 4)`` ``(x0, y0, x1, y1)`` in view pixel coordinates.
        image_index: ``(M,)`` the image of each box.
        output_size: ``oh`` (= ``ow``) or ``(oh, ow)``.
        image_size: the view's ``(height, width)`` in pixels.
        sampling_ratio: bilinear samples per output bin along each axis; the default -1 is torchvision's
            adaptive ``ceil(bin size in cells)`` (detectron2's and mmdetection's 0), so bins at least a cell
            wide are averaged over every cell they cover.
    """
    height, width = image_size
    scale = boxes.new_tensor([features.shape[-1] / width, features.shape[-2] / height] * 2)
    rois = torch.cat((image_index.unsqueeze(1).to(boxes.dtype), boxes * scale), dim=1).to(features.dtype)
    return roi_align(features, rois, output_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True)


def roi_align_pool(
    features: Tensor,
    boxes: Tensor,
    output_size: int | tuple[int, int],
    image_size: tuple[int, int],
    sampling_ratio: int = -1,
) -> Tensor:
    """``(B, C, oh, ow)`` :func:`roi_align_boxes` of one box per image (``boxes`` ``(B, 4)``)."""
    index = torch.arange(len(boxes), device=boxes.device)
    return roi_align_boxes(features, boxes, index, output_size, image_size, sampling_ratio)


def multilevel_roi_align(levels: Sequence[Tensor], boxes: Tensor, image_index: Tensor, level: Tensor,
                         image_size: tuple[int, int], output_size: int) -> Tensor:
    """``(M, C, S, S)`` :func:`roi_align_boxes` of each box from the map of its pyramid level (an FPN RoI
    extractor: detectron2's ``ROIAlignV2``, aligned with adaptive sampling).

    Args:
        levels: ``(B, C, H_l, W_l)`` feature maps of views of ``image_size`` (height, width).
        boxes: ``(M, 4)`` xyxy in view pixels.
        image_index: ``(M,)`` the image of each box.
        level: ``(M,)`` the level to pool each box from.
    """
    first = levels[0]
    pooled = first.new_zeros(len(boxes), first.shape[1], output_size, output_size)
    for index, features in enumerate(levels):
        chosen = (level == index).nonzero().squeeze(1)
        if len(chosen):
            pooled[chosen] = roi_align_boxes(features, boxes[chosen], image_index[chosen], output_size, image_size)
    return pooled
