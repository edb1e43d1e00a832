"""Multi-scale deformable attention for graph export (ONNX, TensorRT): plain gathers, no Python-side shapes.

The training backends read the level layout as Python numbers (``spatial_shapes.tolist()``) and run
kernels a graph exporter cannot trace (mmcv's CUDA op, the pytorch backend's autograd Function with its
sparse backward). Exported, the layout is data: ``spatial_shapes`` and ``level_start_index`` are tensors
computed from the input image size, so every index here is tensor arithmetic on them and the graph is
right for any image size. The only Python loop is over the levels, whose count is fixed by the model.

No ``grid_sample`` (TensorRT has been reported to miscompile it): each bilinear tap is one row of the value,
fetched with a ``Gather`` at a flat index. Zero padding is a mask rather than the pytorch backend's
zero border (a padded copy needs per-level slices of data-dependent size): a tap outside its map reads
a clamped in-bounds row and gets weight zero. Bilinear weights and ``align_corners=False`` come from the
helper the pytorch backend uses, `bilinear_cells`.

Shapes: ``N`` batch, ``S`` pixels of all levels, ``M`` heads, ``D`` channels per head, ``Lq`` queries,
``L`` levels, ``P`` points.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CORNERS = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
"""``(dx, dy)`` of the four bilinear taps from the top-left one: top-left, top-right, bottom-left, bottom-right."""


def bilinear_cells(locations: Tensor, sizes: Tensor, shift: float = 0.0) -> tuple[Tensor, Tensor]:
    """Each point's bilinear cell: the pixel coordinate of its top-left tap (a whole float) and its position
    inside the cell, in ``[0, 1)``.

    ``align_corners=False``: pixel ``i``'s centre is at normalised ``(i + 0.5) / size``, so the normalised
    location ``u`` lies at pixel coordinate ``u * size - 0.5``; ``shift`` is added (a zero border's width).

    Args:
        locations: ``(..., 2)`` normalised ``(x, y)``.
        sizes: ``(W, H)`` per location, broadcastable against ``locations``.
    """
    pixels = locations * sizes
    pixels += shift - 0.5
    cell = pixels.floor()
    frac = pixels.sub_(cell)
    return cell, frac


def ms_deform_attn_export(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention written for export; same contract as `ms_deform_attn_reference`.

    The four taps of every point at once: their flat rows (``start + y * W + x``, clamped into the level)
    and weights (attention x bilinear weight, zero outside the map), broadcasting each level's layout over
    the points; then per level one gather of the rows and a weighted sum. A few dozen graph nodes per call
    (the cost of an export grows with their number); its peak memory is the ``4 * P`` gathered rows per
    output row of one level, so export for inference, where the backends are faster anyway.

    Args:
        value: ``(N, S, M, D)`` float.
        spatial_shapes: ``(L, 2)`` integer ``(H, W)``.
        level_start_index: ``(L,)`` integer.
        sampling_locations: ``(N, Lq, M, L, P, 2)`` normalised ``(x, y)``.
        attention_weights: ``(N, Lq, M, L, P)``.

    Returns:
        ``(N, Lq, M * D)`` in ``value``'s dtype.
    """
    n, length, heads, channels = value.shape
    queries, levels = sampling_locations.shape[1], sampling_locations.shape[3]
    dtype, device = value.dtype, value.device
    # The layout is data: each level's numbers broadcast from (L, 1, 1) against (N, M, L, Lq, P * 4).
    layout = spatial_shapes.to(torch.long).view(levels, 1, 1, 2)
    height, width = layout[..., 0], layout[..., 1]
    start = level_start_index.to(torch.long).view(levels, 1, 1)

    locations = sampling_locations.to(dtype).permute(0, 2, 3, 1, 4, 5)  # (N, M, L, Lq, P, 2)
    cell, frac = bilinear_cells(locations, layout.flip(-1).to(dtype))
    # (a NaN location casts to anything: clamped below, and its NaN weight kept as the reference keeps it)
    taps = (cell.to(torch.long).unsqueeze(-2) + _CORNERS.to(device)).flatten(-3, -2)  # (N, M, L, Lq, P * 4, 2)
    x, y = taps[..., 0], taps[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    pixel = start + torch.minimum(y.clamp(min=0), height - 1) * width + torch.minimum(x.clamp(min=0), width - 1)
    # Row of (image n, head m, pixel) in the value viewed as (N * M * S, D).
    rows = pixel + (torch.arange(n * heads, device=device) * length).view(n, heads, 1, 1, 1)

    attention = attention_weights.to(dtype).permute(0, 2, 3, 1, 4)  # (N, M, L, Lq, P)
    frac_x, frac_y = frac[..., 0], frac[..., 1]
    # pytorch_backend's order of operations, so that both round alike; corners in _CORNERS' order.
    bottom = attention * frac_y
    top = attention - bottom
    top_right, bottom_right = top * frac_x, bottom * frac_x
    weight = torch.stack((top - top_right, top_right, bottom - bottom_right, bottom_right), dim=-1)
    weight = weight.flatten(-2) * inside  # (N, M, L, Lq, P * 4)

    table = value.to(dtype).permute(0, 2, 1, 3).reshape(n * heads * length, channels)
    out = value.new_zeros(n, heads, queries, channels)
    for level in range(levels):  # one level's rows at a time bounds the memory
        gathered = table.index_select(0, rows[:, :, level].reshape(-1)).view(n, heads, queries, -1, channels)
        out = out + (weight[:, :, level].unsqueeze(-2) @ gathered).squeeze(-2)
    return out.permute(0, 2, 1, 3).reshape(n, queries, heads * channels)
