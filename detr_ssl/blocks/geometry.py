"""Where the cells and pixels of two augmented views of one image lie in that image, and in each other.

Pixel- and region-level pretext tasks (PixPro, DenseSiam, LC-loss, RegionCL) must know which locations of
two views show the same part of the image. Each view carries its crop box and whether it was flipped;
everything here is derived from those, batched and without Python loops.

Convention (shared with the data pipeline):

- ``boxes`` ``(B, 4)``: the crop ``(x0, y0, x1, y1)`` in continuous original-image pixel coordinates (a crop
  of columns j..j+w-1 has x0 = j, x1 = j + w).
- ``flipped`` ``(B,)`` bool: the crop was flipped horizontally after cropping, so view column u shows
  original x = x1 - (u / out_w) * (x1 - x0): the flipped view's left edge is the crop's right edge.
- a view is ``size = (out_h, out_w)`` pixels; a feature map of it is a ``grid = (h, w)`` of cells, each
  covering an equal share of the view. Points are ``(x, y)``; cells are numbered row-major.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cell_centres", "cell_diagonals", "image_to_view", "map_points", "overlap_boxes", "pixpro_normalised",
           "positive_mask", "view_to_image"]


def _oriented_x(boxes: Tensor, flipped: Tensor) -> tuple[Tensor, Tensor]:
    """``(B,)`` original x of each view's left and right edge: swapped when the view was flipped."""
    x0, x1 = boxes[:, 0], boxes[:, 2]
    return torch.where(flipped, x1, x0), torch.where(flipped, x0, x1)


def cell_centres(boxes: Tensor, flipped: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, h*w, 2)`` original-image ``(x, y)`` of every cell centre of a view's feature grid, row-major.

    Computed as ``(index + 0.5) * signed_cell_size + view_edge`` with the signed cell width negative for a
    flipped view: this is the order of operations of PixPro's released code, so its masks are reproduced
    bit for bit (:func:`positive_mask`).
    """
    h, w = grid
    left, right = _oriented_x(boxes, flipped)
    cell_w = ((right - left) / w).view(-1, 1, 1)
    cell_h = ((boxes[:, 3] - boxes[:, 1]) / h).view(-1, 1, 1)
    cols = torch.arange(w, dtype=boxes.dtype, device=boxes.device).view(1, 1, w)
    rows = torch.arange(h, dtype=boxes.dtype, device=boxes.device).view(1, h, 1)
    x = (cols + 0.5) * cell_w + left.view(-1, 1, 1)
    y = (rows + 0.5) * cell_h + boxes[:, 1].view(-1, 1, 1)
    return torch.stack(torch.broadcast_tensors(x, y), dim=-1).flatten(1, 2)


def cell_diagonals(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B,)`` length of one cell's diagonal in original-image coordinates (flips do not change it)."""
    h, w = grid
    cell_w = (boxes[:, 2] - boxes[:, 0]) / w
    cell_h = (boxes[:, 3] - boxes[:, 1]) / h
    return torch.sqrt(cell_w**2 + cell_h**2)


def pixpro_normalised(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Crop boxes in the coordinates of PixPro's released data pipeline:
    ``(x0 / (W-1), y0 / (H-1), (x1-1) / (W-1), (y1-1) / (H-1))``.

    The release spans a crop from its first to its last pixel *centre* (j .. j+w-1, hence the ``- 1``) and
    scales x and y separately to [0, 1]. The division runs in float64 and is then rounded to the boxes' dtype,
    as the release divides Python floats before storing float32 tensors.

    Args:
        boxes: ``(B, 4)`` crop boxes in original-image pixels.
        image_sizes: ``(B, 2)`` original image ``(height, width)``, both above 1.
    """
    height, width = image_sizes[:, 0].double(), image_sizes[:, 1].double()
    corners = boxes.double() - torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64, device=boxes.device)
    scale = torch.stack((width, height, width, height), dim=1) - 1
    return (corners / scale).to(boxes.dtype)


def positive_mask(
    boxes_a: Tensor,
    flipped_a: Tensor,
    boxes_b: Tensor,
    flipped_b: Tensor,
    grid_a: tuple[int, int],
    grid_b: tuple[int, int],
    threshold: float,
    image_sizes: Tensor | None = None,
) -> Tensor:
    """``(B, Sa, Sb)`` bool: cell pairs of views a and b whose centres are closer than ``threshold`` times the
    larger of the two views' cell diagonals (PixPro's positive pairs; the comparison is strict).

    Without ``image_sizes`` distances are measured in original-image pixels. With ``image_sizes``
    ``(B, 2)`` (height, width) they are measured in :func:`pixpro_normalised` coordinates, which reproduces
    the released PixPro mask bit for bit; its one-pixel-shorter crops and per-axis scaling make it differ
    from the pixel mask near the threshold, even on square images.
    """
    if image_sizes is not None:
        boxes_a, boxes_b = pixpro_normalised(boxes_a, image_sizes), pixpro_normalised(boxes_b, image_sizes)
    centres_a = cell_centres(boxes_a, flipped_a, grid_a)
    centres_b = cell_centres(boxes_b, flipped_b, grid_b)
    offset = centres_a.unsqueeze(2) - centres_b.unsqueeze(1)
    distance = torch.sqrt(offset[..., 0] ** 2 + offset[..., 1] ** 2)
    scale = torch.maximum(cell_diagonals(boxes_a, grid_a), cell_diagonals(boxes_b, grid_b))
    return distance / scale.view(-1, 1, 1) < threshold


def view_to_image(points: Tensor, boxes: Tensor, flipped: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, N, 2)`` original-image ``(x, y)`` of view-pixel points ``(B, N, 2)`` of a view of ``size``."""
    out_h, out_w = size
    left, right = _oriented_x(boxes, flipped)
    x = left.unsqueeze(1) + points[..., 0] / out_w * (right - left).unsqueeze(1)
    y = boxes[:, 1:2] + points[..., 1] / out_h * (boxes[:, 3] - boxes[:, 1]).unsqueeze(1)
    return torch.stack((x, y), dim=-1)


def image_to_view(points: Tensor, boxes: Tensor, flipped: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, N, 2)`` view-pixel ``(x, y)`` of original-image points; the inverse of :func:`view_to_image`.
    Points outside the crop map outside ``[0, out_w] x [0, out_h]``."""
    out_h, out_w = size
    left, right = _oriented_x(boxes, flipped)
    x = (points[..., 0] - left.unsqueeze(1)) / (right - left).unsqueeze(1) * out_w
    y = (points[..., 1] - boxes[:, 1:2]) / (boxes[:, 3] - boxes[:, 1]).unsqueeze(1) * out_h
    return torch.stack((x, y), dim=-1)


def map_points(
    points: Tensor,
    boxes_from: Tensor,
    flipped_from: Tensor,
    size_from: tuple[int, int],
    boxes_to: Tensor,
    flipped_to: Tensor,
    size_to: tuple[int, int],
) -> Tensor:
    """``(B, N, 2)`` view-pixel points of one view expressed in another view's pixels, through the original
    image (so crops, scales and flips of both views are accounted for)."""
    return image_to_view(view_to_image(points, boxes_from, flipped_from, size_from), boxes_to, flipped_to, size_to)


def overlap_boxes(
    boxes_a: Tensor,
    flipped_a: Tensor,
    size_a: tuple[int, int],
    boxes_b: Tensor,
    flipped_b: Tensor,
    size_b: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor]:
    """The part of the image both crops show, in each view's pixels: region-level tasks pool it from both.

    Returns:
        ``(box_in_a, box_in_b, valid)``: ``(B, 4)`` boxes ``(x0, y0, x1, y1)`` with x0 <= x1 and y0 <= y1 in
        view a's and view b's pixel coordinates (a flip mirrors the box), and ``(B,)`` bool, False where the
        crops do not overlap (their boxes are then all zeros).
    """
    x0 = torch.maximum(boxes_a[:, 0], boxes_b[:, 0])
    y0 = torch.maximum(boxes_a[:, 1], boxes_b[:, 1])
    x1 = torch.minimum(boxes_a[:, 2], boxes_b[:, 2])
    y1 = torch.minimum(boxes_a[:, 3], boxes_b[:, 3])
    valid = (x0 < x1) & (y0 < y1)
    corners = torch.stack((torch.stack((x0, y0), dim=-1), torch.stack((x1, y1), dim=-1)), dim=1)

    def in_view(boxes: Tensor, flipped: Tensor, size: tuple[int, int]) -> Tensor:
        mapped = image_to_view(corners, boxes, flipped, size)
        box = torch.cat((mapped.amin(dim=1), mapped.amax(dim=1)), dim=1)
        return torch.where(valid.unsqueeze(1), box, torch.zeros_like(box))

    return in_view(boxes_a, flipped_a, size_a), in_view(boxes_b, flipped_b, size_b), valid
