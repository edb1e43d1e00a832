"""`MSDeformAttn`: the multi-scale deformable attention layer of Deformable DETR (Zhu et al., 2021).

Each query predicts, per head, level and point, a sampling offset around its reference point and an
attention weight; the op then samples the projected values there. Shapes: ``N`` batch, ``Lq`` queries,
``S`` flattened pixels of all levels, ``C`` = ``d_model``, ``L`` levels, ``M`` heads, ``P`` points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detr_ssl.models.msda.dispatch import Backend, check_backend_name, multi_scale_deformable_attention
from detr_ssl.models.msda.layout import spelled_out


class MSDeformAttn(nn.Module):
    """Deformable attention over ``n_levels`` feature maps with ``n_heads`` heads of ``n_points`` points.

    Parameters whose names contain ``"sampling_offsets"`` (this module's ``sampling_offsets`` Linear) are
    the ones the optimiser trains with a reduced learning rate, matched by name.

    Example:
        >>> attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2, backend="pytorch")
        >>> shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])
        >>> out = attn(torch.randn(1, 3, 32), torch.rand(1, 3, 2, 2), torch.randn(1, 20, 32), shapes, starts)
        >>> out.shape
        torch.Size([1, 3, 32])
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 backend: Backend = "auto") -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        check_backend_name(backend)
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation.

        Offsets start input-independent (zero weight) and spread out: head ``h`` looks along direction
        ``2*pi*h/M`` (scaled so its larger coordinate is 1 pixel), point ``p`` at ``p + 1`` times that,
        identical on every level. Attention starts uniform (zero weight and bias); projections are Xavier.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2 * math.pi / self.n_heads)
        directions = torch.stack((angles.cos(), angles.sin()), dim=-1)  # (M, 2)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        scales = torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * scales  # (M, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                input_spatial_shapes: Tensor, input_level_start_index: Tensor,
                input_padding_mask: Tensor | None = None) -> Tensor:
        """Attend from each query to sampled points around its reference on every level.

        Args:
            query: ``(N, Lq, C)``.
            reference_points: ``(N, Lq, L, 2)`` normalised ``(x, y)`` per level, offsets then being in
                pixels of each level; or ``(N, Lq, L, 4)`` ``(cx, cy, w, h)`` boxes, offsets then scaled by
                ``0.5 * (w, h) / n_points`` so that the initial points stay inside the box.
            input_flatten: ``(N, S, C)`` features of all levels (flattened row-major, concatenated).
            input_spatial_shapes: ``(L, 2)`` integer ``(H, W)``.
            input_level_start_index: ``(L,)``.
            input_padding_mask: ``(N, S)`` bool, True on padding pixels (they contribute nothing), or None.

        Returns:
            ``(N, Lq, C)``.
        """
        n, queries, _ = query.shape
        _, length, _ = input_flatten.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        expected = [(n, queries, levels, 2), (n, queries, levels, 4)]
        if tuple(reference_points.shape) not in expected:
            raise ValueError(f"reference_points must be (N, Lq, {levels}, 2) or (N, Lq, {levels}, 4) with query's "
                             f"N, Lq = {n}, {queries}; got {tuple(reference_points.shape)}")

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, length, heads, self.d_model // heads)

        offsets = self.sampling_offsets(query).view(n, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, queries, heads, levels * points).softmax(-1)
        weights = weights.view(n, queries, heads, levels, points)

        reference = over_points(reference_points, points)  # (N, Lq, 1, L, P, 2 or 4)
        if reference_points.shape[-1] == 2:
            pixels = input_spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
            # out of place: under autocast the offsets are half precision, the sum float32 like the reference
            locations = reference + offsets / spelled_out(pixels[:, None, :], levels, points, 2)
        else:
            locations = offsets * reference[..., 2:]
            locations *= 0.5 / points
            locations += reference[..., :2]

        out = multi_scale_deformable_attention(value, input_spatial_shapes, input_level_start_index,
                                               locations, weights, backend=self.backend)
        return self.output_proj(out)


def over_points(per_level: Tensor, points: int) -> Tensor:
    """``(N, Lq, L, K)`` -> ``(N, Lq, 1, L, P, K)``: each level's value repeated for its ``P`` points, in
    memory (see :func:`spelled_out`)."""
    n, queries, levels, size = per_level.shape
    return spelled_out(per_level[:, :, None, :, None, :], n, queries, 1, levels, points, size)
