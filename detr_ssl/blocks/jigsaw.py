"""Jigsaw patches of a batch of views: each view cut into a ``grid x grid`` array of cells and one square
patch taken from every cell (DetCo's local view; the jigsaw pretexts of Noroozi & Favaro and PIRL).

A patch is a plain crop of the view's pixels, never resampled: ``patch_size`` no larger than the smallest
cell, at a random position inside its cell (the "jitter" that keeps the network from matching patches by
their borders). A patch as large as its cell is the cell itself, so with a view side divisible by ``grid``
and ``patch_size = side // grid`` the patches tile the view exactly.

Cells are numbered row-major; cell ``(i, j)`` spans rows ``edges[i] .. edges[i+1] - 1`` and columns
``edges[j] .. edges[j+1] - 1`` with ``edges = floor(k * side / grid)`` (:func:`cell_edges`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cell_edges", "cut_patches", "jigsaw", "jigsaw_offsets"]


def cell_edges(side: int, grid: int) -> Tensor:
    """``(grid + 1,)`` int64 pixel edges of ``grid`` cells along a side of ``side`` pixels (the first 0, the
    last ``side``); cells differ by at most one pixel."""
    return torch.arange(grid + 1) * side // grid


def jigsaw_offsets(
    batch: int,
    size: tuple[int, int],
    grid: int,
    patch_size: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(B, grid*grid, 2)`` int64 top-left ``(row, column)`` of each cell's patch, drawn uniformly (torch's
    default generator) among the positions where the patch fits in its cell, independently per image and cell.

    Raises:
        ValueError: if ``patch_size`` is not positive or exceeds the smallest cell of ``size``.
    """
    height, width = size
    smallest = min(height, width) // grid
    if not 1 <= patch_size <= smallest:
        raise ValueError(f"a jigsaw patch must be 1 to {smallest} px (the smallest cell of a {height}x{width} "
                         f"view in a {grid}x{grid} grid), got {patch_size}")
    starts, slack = [], []
    for side in (height, width):
        edges = cell_edges(side, grid)
        starts.append(edges[:-1])
        slack.append(edges[1:] - edges[:-1] - patch_size)
    # Per cell (row-major): its top and left edges and how far the patch can move in each direction.
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    origin = torch.stack((starts[0][rows], starts[1][cols]), dim=-1).flatten(0, 1)
    room = torch.stack((slack[0][rows], slack[1][cols]), dim=-1).flatten(0, 1)
    jitter = (torch.rand(batch, grid * grid, 2) * (room + 1)).long()
    return (origin + jitter).to(device)


def cut_patches(images: Tensor, offsets: Tensor, patch_size: int) -> Tensor:
    """``(B, N, C, p, p)`` the ``p x p`` crops of ``images`` ``(B, C, H, W)`` whose top-left pixels are
    ``offsets`` ``(B, N, 2)`` (row, column): exact copies of the pixels, gradient flowing back into them."""
    span = torch.arange(patch_size, device=images.device)
    rows = (offsets[..., 0:1] + span).unsqueeze(-1)  # (B, N, p, 1)
    cols = (offsets[..., 1:2] + span).unsqueeze(-2)  # (B, N, 1, p)
    index = torch.arange(len(images), device=images.device).view(-1, 1, 1, 1)
    return images.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 1, 4, 2, 3)


def jigsaw(images: Tensor, grid: int, patch_size: int) -> tuple[Tensor, Tensor]:
    """One random jigsaw of every view: ``(patches (B, grid*grid, C, p, p), offsets (B, grid*grid, 2))``."""
    offsets = jigsaw_offsets(len(images), tuple(images.shape[-2:]), grid, patch_size, images.device)
    return cut_patches(images, offsets, patch_size), offsets
