"""Multi-scale deformable attention in plain PyTorch, fast on CPU: a sparse gather-sum with its own backward.

Each output row (one image, query and head) is a weighted sum of ``L * P * 4`` value rows: the four
bilinear corners ("taps") of every sampling point, each weighted by attention weight x bilinear weight.
We compute every tap's flat row index and weight once, then ``F.embedding_bag`` gathers, weights and sums
them in one fused pass. The ``(N*M, D, Lq, L*P)`` tensor of samples that the per-level ``grid_sample``
reference builds (the cost of that formulation, in time and memory) never exists.

Zero padding is literal: the value maps are copied into maps with a ``_PAD``-pixel zero border and the
top-left corner of every point is clamped into that border, so every tap reads a real row and taps
outside the image read zeros. No validity masks, and the four corners of a point sit at fixed offsets
(per level) from its top-left corner.

The backward is written by hand (autograd through ``grid_sample`` and the big product is the other half
of the reference's cost). With ``g`` the output gradient:

- tap-weight gradient = ``<value row, g row>`` for each tap: one sampled dense-dense product
  (``torch.sparse.sampled_addmm``) per corner, again with nothing materialised;
- attention and location gradients follow from it through the bilinear weights (closed form below);
- value gradient is the transposed gather, a scatter. Sorting the points once by top-left row orders the
  taps of *every* corner by destination row (a corner is a constant shift of the top-left within a
  level, and levels occupy disjoint row ranges), so ``embedding_bag`` with per-row offsets sums each
  destination row's contributions directly.

Shapes: ``N`` batch, ``S`` pixels of all levels, ``M`` heads, ``D`` channels per head, ``Lq`` queries,
``L`` levels, ``P`` points; ``B = N * Lq * M`` output rows, ``K = L * P`` points per output row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

_PAD = 2
"""Zero border in pixels. Clamping a top-left corner into ``[-2, W]`` keeps both of its columns out of
the image exactly when the point is, so two border pixels make every tap in bounds without masks."""

_CORNERS = 4  # order: top-left, top-right, bottom-left, bottom-right


@dataclass(frozen=True)
class _Levels:
    """Where each level lives in the caller's flat value (``S`` rows) and in our zero-padded copy (``S'``)."""

    shapes: tuple[tuple[int, int], ...]
    starts: tuple[int, ...]
    padded_starts: tuple[int, ...]
    padded_length: int

    @classmethod
    def of(cls, shapes: list[list[int]], starts: list[int]) -> _Levels:
        padded_starts, total = [], 0
        for height, width in shapes:
            padded_starts.append(total)
            total += (height + 2 * _PAD) * (width + 2 * _PAD)
        return cls(tuple((h, w) for h, w in shapes), tuple(starts), tuple(padded_starts), total)

    def _interiors(self, padded: Tensor) -> list[Tensor]:
        """Views ``(N, H, W, C)`` of the image area of each level of ``padded`` ``(N, S', C)``."""
        views = []
        for (height, width), start in zip(self.shapes, self.padded_starts):
            size = (height + 2 * _PAD) * (width + 2 * _PAD)
            grid = padded[:, start : start + size].view(padded.shape[0], height + 2 * _PAD, width + 2 * _PAD, padded.shape[2])
            views.append(grid[:, _PAD : _PAD + height, _PAD : _PAD + width])
        return views

    def pad(self, value: Tensor) -> Tensor:
        """``(N, S, M, D)`` -> ``(N, S', M, D)``: every level surrounded by ``_PAD`` zero pixels."""
        n, length, heads, channels = value.shape
        flat = value.reshape(n, length, heads * channels)
        padded = value.new_zeros(n, self.padded_length, heads * channels)
        for (height, width), start, interior in zip(self.shapes, self.starts, self._interiors(padded)):
            interior.copy_(flat[:, start : start + height * width].view(n, height, width, heads * channels))
        return padded.view(n, self.padded_length, heads, channels)

    def unpad(self, padded: Tensor, length: int) -> Tensor:
        """Adjoint of `pad`: ``(N, S', M, D)`` -> ``(N, length, M, D)``, the image areas put back in place."""
        n, _, heads, channels = padded.shape
        flat = padded.new_zeros(n, length, heads * channels)  # zeros: rows no level covers get no gradient
        for (height, width), start, interior in zip(
            self.shapes, self.starts, self._interiors(padded.view(n, self.padded_length, heads * channels))
        ):
            flat[:, start : start + height * width].view(n, height, width, heads * channels).copy_(interior)
        return flat.view(n, length, heads, channels)


@dataclass(frozen=True)
class _Taps:
    """The four bilinear taps of every sampling point, corner-major so each corner is a contiguous block.

    ``index`` ``(4, B, K)``: row of the padded value viewed as ``(N * S' * M, D)``.
    ``weight`` ``(4, B, K)``: attention weight x bilinear weight.
    ``frac_x``, ``frac_y`` ``(N, Lq, M, L, P)``: position of the point inside its bilinear cell, in ``[0, 1)``.
    """

    index: Tensor
    weight: Tensor
    frac_x: Tensor
    frac_y: Tensor


def _index_dtype(*sizes: int) -> torch.dtype:
    """int32 indices gather faster (half the bytes); int64 only when a size needs it."""
    return torch.int32 if max(sizes) < 2**31 - 1 else torch.int64


def _taps(levels: _Levels, locations: Tensor, attention: Tensor) -> _Taps:
    """Tap indices and weights. ``locations`` ``(N, Lq, M, L, P, 2)``, ``attention`` ``(N, Lq, M, L, P)``."""
    n, queries, heads, n_levels, points, _ = locations.shape
    device, dtype = locations.device, locations.dtype
    rows = n * levels.padded_length * heads
    itype = _index_dtype(rows, n * queries * heads * n_levels * points + 1)

    def per_level(values: list[int] | list[float], like: torch.dtype) -> Tensor:  # (L, 1): broadcasts over P
        return torch.tensor(values, dtype=like, device=device).view(n_levels, 1)

    widths = [w for _, w in levels.shapes]
    heights = [h for h, _ in levels.shapes]
    # Pixel coordinates in the padded map: pixel i's centre, normalised (i + 0.5) / W, lands on i + _PAD.
    x = locations[..., 0] * per_level(widths, dtype)
    x += _PAD - 0.5
    y = locations[..., 1] * per_level(heights, dtype)
    y += _PAD - 0.5
    x0, y0 = x.floor(), y.floor()
    frac_x, frac_y = x.sub_(x0), y.sub_(y0)
    zero = torch.zeros((), dtype=itype, device=device)
    # Integer clamp (after the cast): also tames inf/NaN, whose cast is arbitrary, into the zero border.
    col = x0.to(itype).clamp_(zero, per_level([w + _PAD for w in widths], itype))
    row = y0.to(itype).clamp_(zero, per_level([h + _PAD for h in heights], itype))

    row_stride = [(w + 2 * _PAD) * heads for w in widths]  # padded rows are W + 2*_PAD pixels of M heads
    top_left = row.mul_(per_level(row_stride, itype)).add_(col, alpha=heads)
    base = (  # (N, 1, M, L, 1): first row of image n, head m, level l
        torch.arange(n, dtype=itype, device=device).view(n, 1, 1, 1, 1) * (levels.padded_length * heads)
        + torch.arange(heads, dtype=itype, device=device).view(1, 1, heads, 1, 1)
        + (torch.tensor(levels.padded_starts, dtype=itype, device=device) * heads).view(1, 1, 1, n_levels, 1)
    )
    top_left += base
    corner_offsets = torch.tensor([[0, heads, s, s + heads] for s in row_stride], dtype=itype, device=device)
    index = top_left.new_empty((_CORNERS, *top_left.shape))  # explicit: broadcasting would pick corner-last
    torch.add(top_left, corner_offsets.t().reshape(_CORNERS, 1, 1, 1, n_levels, 1), out=index)

    bottom = attention * frac_y  # attention x vertical bilinear weight of the bottom / top row
    top = attention - bottom
    weight = attention.new_empty((_CORNERS, *attention.shape))
    torch.mul(top, frac_x, out=weight[1])
    torch.sub(top, weight[1], out=weight[0])
    torch.mul(bottom, frac_x, out=weight[3])
    torch.sub(bottom, weight[3], out=weight[2])

    shape = (_CORNERS, n * queries * heads, n_levels * points)
    return _Taps(index.view(shape), weight.view(shape), frac_x, frac_y)


def _sampled_dots(index: Tensor, grad: Tensor, rows: Tensor) -> Tensor:
    """``out[b, k] = <grad[b], rows[index[b, k]]>`` for ``index`` ``(B, K)`` without gathering the rows."""
    count, per_row = index.shape
    crow = torch.arange(0, count * per_row + 1, per_row, dtype=index.dtype, device=index.device)
    with warnings.catch_warnings():  # the one-time "sparse CSR is beta" notice is not for our users
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, index.reshape(-1), grad.new_zeros(count * per_row),
                                          size=(count, rows.shape[0]), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, grad, rows.t(), beta=0.0)  # beta=0 still reads values: zeros
    return dots.values().view(count, per_row)


class _SparseMSDA(torch.autograd.Function):
    """Gather-sum over bilinear taps; the backward never materialises per-tap value rows either."""

    @staticmethod
    def forward(ctx: FunctionCtx, value: Tensor, locations: Tensor, attention: Tensor, levels: _Levels) -> Tensor:
        n, length, heads, channels = value.shape
        queries = locations.shape[1]
        padded = levels.pad(value)
        flat = padded.view(-1, channels)
        taps = _taps(levels, locations, attention)
        out = value.new_zeros(n * queries * heads, channels)
        if taps.index.numel():
            for corner in range(_CORNERS):
                out += F.embedding_bag(taps.index[corner], flat, per_sample_weights=taps.weight[corner], mode="sum")
        ctx.save_for_backward(padded, attention, taps.index, taps.weight, taps.frac_x, taps.frac_y)
        ctx.levels, ctx.length = levels, length
        return out.view(n, queries, heads * channels)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        padded, attention, index, weight, frac_x, frac_y = ctx.saved_tensors
        levels: _Levels = ctx.levels
        n, padded_length, heads, channels = padded.shape
        flat = padded.view(-1, channels)
        grad = grad_out.reshape(-1, channels).contiguous()  # (B, D)
        need_value, need_locations, need_attention = ctx.needs_input_grad[:3]
        grad_value = grad_locations = grad_attention = None
        empty = index.numel() == 0

        if need_locations or need_attention:
            # d loss / d tap weight, per corner, shaped like the points (N, Lq, M, L, P).
            g = [
                torch.zeros_like(attention) if empty else _sampled_dots(index[c], grad, flat).view(attention.shape)
                for c in range(_CORNERS)
            ]
            # Tap weights are a*(1-fy)*(1-fx), a*(1-fy)*fx, a*fy*(1-fx), a*fy*fx: the chain rule in lerps.
            top, bottom = torch.lerp(g[0], g[1], frac_x), torch.lerp(g[2], g[3], frac_x)
            if need_attention:
                grad_attention = torch.lerp(top, bottom, frac_y)
            if need_locations:
                sizes = torch.tensor(levels.shapes, dtype=attention.dtype, device=attention.device)  # (L, 2) (H, W)
                grad_locations = attention.new_empty((*attention.shape, 2))
                grad_x = torch.lerp(g[1] - g[0], g[3] - g[2], frac_y).mul_(attention)
                torch.mul(grad_x, sizes[:, 1:], out=grad_locations[..., 0])  # d frac_x / d x = W
                torch.mul(bottom.sub_(top).mul_(attention), sizes[:, :1], out=grad_locations[..., 1])

        if need_value:
            rows = n * padded_length * heads
            padded_grad = grad.new_zeros(rows, channels)
            if not empty:
                per_row = index.shape[-1]
                order = torch.argsort(index[0].reshape(-1))  # by top-left row: orders every corner's rows too
                bags = torch.div(order, per_row, rounding_mode="floor")  # output row each sorted point feeds
                sorted_weight = weight.view(_CORNERS, -1).index_select(1, order)
                for corner in range(_CORNERS):
                    counts = torch.bincount(index[corner].reshape(-1), minlength=rows)
                    offsets = torch.cat((counts.new_zeros(1), counts.cumsum(0)))
                    padded_grad += F.embedding_bag(bags, grad, offsets, per_sample_weights=sorted_weight[corner],
                                                   mode="sum", include_last_offset=True)
            grad_value = levels.unpad(padded_grad.view(n, padded_length, heads, channels), ctx.length)

        return grad_value, grad_locations, grad_attention, None


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Fast pure-PyTorch multi-scale deformable attention; same contract as `ms_deform_attn_reference`.

    All three float inputs must share one dtype (float32 or float64; the dispatcher casts).
    Differentiable once with respect to ``value``, ``sampling_locations`` and ``attention_weights``.

    Args:
        value: ``(N, S, M, D)``.
        spatial_shapes: ``(L, 2)`` integer ``(H, W)``.
        level_start_index: ``(L,)``.
        sampling_locations: ``(N, Lq, M, L, P, 2)`` normalised ``(x, y)``.
        attention_weights: ``(N, Lq, M, L, P)``.

    Returns:
        ``(N, Lq, M * D)``.
    """
    levels = _Levels.of(spatial_shapes.tolist(), level_start_index.tolist())
    return _SparseMSDA.apply(value, sampling_locations, attention_weights, levels)
