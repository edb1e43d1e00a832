"""The plain definition of multi-scale deformable attention: one ``F.grid_sample`` per level.

This is the formulation of Deformable DETR (Zhu et al., 2021, eq. 3) written the obvious way, kept as the
specification the fast backends are tested and benchmarked against. It is correct but slow on CPU: it
materialises every bilinear sample, a ``(N*M, D, Lq, L*P)`` tensor, before weighting and summing them.

Shapes: ``N`` batch, ``S`` flattened pixels of all levels, ``M`` heads, ``D`` channels per head,
``Lq`` queries, ``L`` levels, ``P`` sampling points per head and level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinear sampling (zero padding, ``align_corners=False``) of every level, weighted and summed.

    Args:
        value: ``(N, S, M, D)`` features of all levels, flattened row-major per level and concatenated.
        spatial_shapes: ``(L, 2)`` integer ``(H, W)`` of each level.
        level_start_index: ``(L,)`` offset of each level inside ``S``.
        sampling_locations: ``(N, Lq, M, L, P, 2)`` ``(x, y)`` in ``[0, 1]`` of each level
            (pixel ``i``'s centre is at ``(i + 0.5) / W``); points outside read zeros.
        attention_weights: ``(N, Lq, M, L, P)`` weights, already normalised by the caller.

    Returns:
        ``(N, Lq, M * D)``, heads concatenated.
    """
    n, _, heads, channels = value.shape
    _, queries, _, _, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations.to(value.dtype) - 1  # grid_sample's [-1, 1] convention
    samples = []
    for level, ((height, width), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        level_value = value[:, start : start + height * width]  # (N, H*W, M, D)
        level_value = level_value.permute(0, 2, 3, 1).reshape(n * heads, channels, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(n * heads, queries, points, 2)
        samples.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (N*M, D, Lq, P)
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    weights = attention_weights.to(value.dtype).transpose(1, 2).reshape(n * heads, 1, queries, -1)
    out = (stacked * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(n, heads * channels, queries).transpose(1, 2)
