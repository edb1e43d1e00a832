"""LC-loss: the pixel-level local contrastive loss of Islam et al., "Self-Supervised Learning with Local
Contrastive Loss for Detection and Semantic Segmentation" (WACV 2023), as we read the paper (no code was
released).

Every cell of the query view's dense embedding map is an anchor. Its positive is the key view's dense map
sampled bilinearly at the same point of the original image (found through both views' crop boxes and
flips); its negatives are the key map sampled at the points of the *other* query cells of the same image.
So each image contributes an ``N x N`` similarity matrix whose diagonal holds the positives, and the loss is
the cross-entropy of each row with its diagonal entry, over cells whose point lies inside the key view
(cells mapping outside it neither anchor nor act as negatives). No negatives come from other images, so
nothing is gathered across processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.blocks.geometry import cell_centres, image_to_view
from detr_ssl.datasets.multicrop import ViewGeometry
from detr_ssl.tasks.options.lcloss import LC_TEMPERATURE

__all__ = ["LC_TEMPERATURE", "as_dense_map", "corresponding_points", "lc_loss", "local_info_nce", "sample_points"]


def as_dense_map(dense: Tensor) -> Tensor:
    """``(B, S, D)`` per-location embeddings of a square grid, row-major -> the ``(B, D, s, s)`` map."""
    batch, locations, dim = dense.shape
    side = math.isqrt(locations)
    if side * side != locations:
        raise ValueError(f"{locations} locations do not form a square grid")
    return dense.transpose(1, 2).reshape(batch, dim, side, side)


def corresponding_points(
    query: ViewGeometry, key: ViewGeometry, grid: tuple[int, int], key_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Where the key view shows the image point at the centre of every cell of the query view's grid.

    Args:
        query, key: the two views' geometry (same images, same order).
        grid: ``(h, w)`` of the query view's dense map.
        key_size: ``(height, width)`` in pixels of the key view (the query's cells are placed by its crop
            box alone).

    Returns:
        ``(B, h*w, 2)`` the points in :func:`torch.nn.functional.grid_sample` coordinates of the key view
        (``align_corners=False``: -1 and 1 are the view's outer edges), and ``(B, h*w)`` bool, True where the
        point lies inside the key view (edges included).
    """
    centres = cell_centres(query.boxes, query.flipped, grid)
    points = image_to_view(centres, key.boxes, key.flipped, key_size)
    extent = torch.tensor([key_size[1], key_size[0]], dtype=points.dtype, device=points.device)
    valid = ((points >= 0) & (points <= extent)).all(dim=-1)
    return points / extent * 2 - 1, valid


def sample_points(dense: Tensor, points: Tensor) -> Tensor:
    """``(B, N, D)`` bilinear samples of a ``(B, D, h, w)`` map at ``(B, N, 2)`` grid-sample coordinates
    (beyond the outermost cell centres the edge cells' values are extended)."""
    sampled = F.grid_sample(dense, points.unsqueeze(2).to(dense.dtype), mode="bilinear", padding_mode="border",
                            align_corners=False)
    return sampled.squeeze(3).transpose(1, 2)


def local_info_nce(query: Tensor, keys: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Mean over valid anchors of ``-log softmax_j(q_i . k_j / temperature)[i]``, ``j`` over the valid cells
    of the same image: the positive of anchor ``i`` is ``keys[:, i]``, its negatives the other valid keys.

    Args:
        query: ``(B, N, D)`` L2-normalised anchors.
        keys: ``(B, N, D)`` L2-normalised keys, ``keys[b, i]`` the positive of ``query[b, i]``.
        valid: ``(B, N)`` bool, the cells that take part.
        temperature: softmax temperature.

    Returns:
        A scalar; 0 (still attached to ``query``) when no cell is valid.
    """
    if not bool(valid.any()):
        return query.sum() * 0
    logits = (query @ keys.transpose(1, 2)) / temperature
    logits = logits.masked_fill(~valid.unsqueeze(1), float("-inf"))
    diagonal = torch.arange(query.shape[1], device=query.device).expand_as(valid)
    return F.cross_entropy(logits[valid], diagonal[valid])


def lc_loss(
    query_map: Tensor, key_map: Tensor, query: ViewGeometry, key: ViewGeometry, key_size: tuple[int, int],
    temperature: float = LC_TEMPERATURE,
) -> Tensor:
    """The LC-loss of one query view against one key view.

    Args:
        query_map: ``(B, D, h, w)`` dense embeddings of the query view (need not be normalised).
        key_map: ``(B, D, h', w')`` dense embeddings of the key view; detach it for a stop-gradient key.
        query, key: the views' geometry.
        key_size: the key view's ``(height, width)`` in pixels.
        temperature: softmax temperature.
    """
    points, valid = corresponding_points(query, key, tuple(query_map.shape[2:]), key_size)
    anchors = F.normalize(query_map.flatten(2).transpose(1, 2), dim=-1)
    keys = F.normalize(sample_points(key_map, points), dim=-1)
    return local_info_nce(anchors, keys, valid, temperature)
