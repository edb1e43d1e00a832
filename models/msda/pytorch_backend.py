"""Multi-scale deformable attention in plain PyTorch, fast on CPU: a sparse gather-sum with its own backward.

Each output row (one image, query and head) is a weighted sum of ``4 * L * P`` value rows: the four
bilinear corners ("taps") of every sampling point, each weighted by attention weight x bilinear weight.
We compute every tap's flat row index and weight once, then one ``F.embedding_bag`` call gathers, weighs
and sums them in a single fused pass. The ``(N*M, D, Lq, L*P)`` tensor of samples that the per-level
``grid_sample`` reference builds, which is that formulation's cost in time and memory, never exists
(nor the 4x larger one a plain gather of the taps would build: why "four flat gathers" were slower).

Zero padding is literal: the value maps are copied into maps with a ``_PAD``-pixel zero border and the
top-left corner of every point is clamped into that border, so every tap reads a real row, taps outside
the image read zeros, and no validity masks are needed. Within a level the four corners of a point then
sit at fixed offsets from its top-left corner, which the backward exploits.

The backward is written by hand: autograd through ``grid_sample`` and the big weighted product is the
other half of the reference's cost. With ``g`` the output gradient:

- tap-weight gradients ``<value row, g row>``: one sampled dense-dense product
  (``torch.sparse.sampled_addmm``) over the same taps, again with nothing materialised;
- attention and location gradients follow from those through the bilinear weights (`_point_grads`);
- the value gradient is the transposed gather, a scatter (`_scatter_rows`): taps are sorted by
  destination row and ``embedding_bag`` with per-row offsets sums each row's contributions.

``scripts/bench_msda.py`` times it and measures its peak memory against the reference at Deformable
DETR's encoder size (docs/PERFORMANCE.md has the numbers). It is the same math on CUDA, where mmcv's fused
kernel is the usual choice.

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

from detr_ssl.models.msda.export_formulation import bilinear_cells
from detr_ssl.models.msda.layout import spelled_out
from detr_ssl.models.msda.precision import autocast_disabled

_PAD = 2
"""Zero border in pixels. A point whose top-left column lies left of -1 or right of W-1 has both columns
outside the image; clamping it to -2 or W keeps both inside the border, so with two border pixels a
clamped point reads exactly what it should (zeros) and every tap is in bounds without masks."""

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
            grid = padded[:, start : start + size].view(
                padded.shape[0], height + 2 * _PAD, width + 2 * _PAD, padded.shape[2]
            )
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
    """The four bilinear taps of every sampling point, grouped by output row: ``(B, 4, K)``, so each output
    row is one bag of ``4 * K`` taps for ``embedding_bag`` and each corner a ``(B, K)`` slice.

    ``index``: row of the padded value viewed as ``(N * S' * M, D)``.
    ``weight``: attention weight x bilinear weight.
    ``frac`` ``(N, Lq, M, L, P, 2)``: position of the point inside its bilinear cell, in ``[0, 1)``.
    """

    index: Tensor
    weight: Tensor
    frac: Tensor


def _index_dtype(*sizes: int) -> torch.dtype:
    """int32 indices gather faster (half the bytes); int64 only when a size needs it."""
    return torch.int32 if max(sizes) < 2**31 - 1 else torch.int64


def _level_sizes(levels: _Levels, dtype: torch.dtype, device: torch.device, heads: int, points: int) -> Tensor:
    """``(M, L, P, 2)`` level ``(W, H)``, against ``(..., M, L, P, 2)`` locations (see :func:`spelled_out`)."""
    sizes = torch.tensor([[w, h] for h, w in levels.shapes], dtype=dtype, device=device)
    return spelled_out(sizes.view(1, -1, 1, 2), heads, len(levels.shapes), points, 2)


def _taps(levels: _Levels, locations: Tensor, attention: Tensor) -> _Taps:
    """Tap indices and weights. ``locations`` ``(N, Lq, M, L, P, 2)``, ``attention`` ``(N, Lq, M, L, P)``."""
    n, queries, heads, n_levels, points, _ = locations.shape
    device = locations.device
    rows = n * levels.padded_length * heads
    itype = _index_dtype(rows, n * queries * heads * n_levels * points * _CORNERS + 1)

    # Pixel coordinates in the padded map: pixel i's centre, normalised (i + 0.5) / W, lands on i + _PAD.
    sizes = _level_sizes(levels, locations.dtype, device, heads, points)
    cell, frac = bilinear_cells(locations, sizes, shift=_PAD)
    # Integer clamp (after the cast): also tames inf/NaN, whose cast is arbitrary, into the zero border.
    low = torch.zeros((), dtype=itype, device=device)
    cell = cell.to(itype).clamp_(low, sizes.to(itype) + _PAD)

    row_stride = [(w + 2 * _PAD) * heads for _, w in levels.shapes]  # padded rows: W + 2*_PAD pixels of M heads
    top_left = cell[..., 1] * spelled_out(torch.tensor(row_stride, dtype=itype, device=device).view(-1, 1),
                                          n_levels, points)
    top_left.add_(cell[..., 0], alpha=heads)
    top_left += spelled_out(  # first row of image n, head m, level l
        torch.arange(n, dtype=itype, device=device).view(n, 1, 1, 1, 1) * (levels.padded_length * heads)
        + torch.arange(heads, dtype=itype, device=device).view(1, 1, heads, 1, 1)
        + (torch.tensor(levels.padded_starts, dtype=itype, device=device) * heads).view(1, 1, 1, n_levels, 1),
        n, 1, heads, n_levels, points)
    corner_offsets = torch.tensor([[0, heads, s, s + heads] for s in row_stride], dtype=itype, device=device)
    index = top_left.new_empty((n, queries, heads, _CORNERS, n_levels, points))
    torch.add(top_left.unsqueeze(3), spelled_out(corner_offsets.t().view(_CORNERS, n_levels, 1), _CORNERS,
                                                 n_levels, points), out=index)

    frac_x, frac_y = frac[..., 0], frac[..., 1]
    bottom = attention * frac_y  # attention x vertical bilinear weight of the bottom / top row
    top = attention - bottom
    weight = attention.new_empty(index.shape)
    torch.mul(top, frac_x, out=weight[:, :, :, 1])
    torch.sub(top, weight[:, :, :, 1], out=weight[:, :, :, 0])
    torch.mul(bottom, frac_x, out=weight[:, :, :, 3])
    torch.sub(bottom, weight[:, :, :, 3], out=weight[:, :, :, 2])

    shape = (n * queries * heads, _CORNERS, n_levels * points)
    return _Taps(index.view(shape), weight.view(shape), frac)


def _sampled_dots(index: Tensor, grad: Tensor, rows: Tensor) -> Tensor:
    """``out[b, k] = <grad[b], rows[index[b, k]]>`` for ``index`` ``(B, K)`` without gathering the rows."""
    count, per_row = index.shape
    crow = torch.arange(0, count * per_row + 1, per_row, dtype=index.dtype, device=index.device)
    with warnings.catch_warnings():  # the one-time "sparse CSR is beta" notice is not for our users
        warnings.simplefilter("ignore", UserWarning)
        # zeros: beta=0 still reads the pattern's values
        pattern = torch.sparse_csr_tensor(crow, index.reshape(-1), grad.new_zeros(count * per_row),
                                          size=(count, rows.shape[0]), check_invariants=False)
        # out=pattern computes in place; a separate result would first clone the whole pattern
        torch.sparse.sampled_addmm(pattern, grad, rows.t(), beta=0.0, out=pattern)
    return pattern.values().view(count, per_row)


def _scatter_rows(index: Tensor, weight: Tensor, grad: Tensor, rows: int) -> Tensor:
    """Adjoint of the forward gather: ``out[index[b, c, k]] += weight[b, c, k] * grad[b]``, ``(rows, D)``.

    Taps are sorted by destination row so that one ``embedding_bag`` (bags = destination rows, indices =
    source output rows) sums each row's contributions without materialising them.

    With more points than value rows (encoder self-attention) we sort only the points, by top-left row,
    a quarter of the work: that order sorts every corner's rows too, because within a level a corner is
    the top-left row plus a constant and each (image, level) owns a disjoint, increasing range of rows.
    Each corner's runs then go to their own block of ``rows`` destinations, summed at the end. With few
    points (decoder queries) sorting the taps themselves is cheap and skips the four blocks.
    """
    count, corners, per_row = index.shape
    if count * per_row > rows:
        order = torch.argsort(index[:, 0].reshape(-1))
        sources = torch.div(order, per_row, rounding_mode="floor").to(index.dtype)  # output row of each point
        sources = sources.repeat(corners)
        sorted_weight = weight.transpose(0, 1).reshape(corners, -1).index_select(1, order)
        block = torch.arange(0, corners * rows, rows, dtype=index.dtype, device=index.device).view(1, -1, 1)
        destinations, blocks = index + block, corners
    else:
        order = torch.argsort(index.reshape(-1))
        sources = torch.div(order, corners * per_row, rounding_mode="floor").to(index.dtype)
        sorted_weight = weight.reshape(-1).index_select(0, order)
        destinations, blocks = index, 1
    counts = torch.bincount(destinations.reshape(-1), minlength=blocks * rows)
    del destinations
    offsets = torch.cat((counts.new_zeros(1), counts.cumsum(0))).to(index.dtype)
    summed = F.embedding_bag(sources, grad, offsets, per_sample_weights=sorted_weight.reshape(-1), mode="sum",
                             include_last_offset=True)
    del sources, sorted_weight
    return summed.view(blocks, rows, -1).sum(0)


def _point_grads(dots: Tensor, frac: Tensor, attention: Tensor, levels: _Levels, need_locations: bool,
                 need_attention: bool) -> tuple[Tensor | None, Tensor | None]:
    """Location and attention gradients from ``dots`` ``(B, 4, K)``, the gradients of the tap weights.

    Tap weights are ``a*(1-fy)*(1-fx)``, ``a*(1-fy)*fx``, ``a*fy*(1-fx)``, ``a*fy*fx``: the chain rule in lerps.
    """
    g = dots.view(*attention.shape[:3], _CORNERS, *attention.shape[3:]).unbind(3)  # each like the points
    frac_x, frac_y = frac[..., 0], frac[..., 1]
    top, bottom = torch.lerp(g[0], g[1], frac_x), torch.lerp(g[2], g[3], frac_x)
    grad_attention = torch.lerp(top, bottom, frac_y) if need_attention else None
    grad_locations = None
    if need_locations:
        grad_x = torch.lerp(g[1] - g[0], g[3] - g[2], frac_y).mul_(attention)
        grad_frac = torch.stack((grad_x, bottom.sub_(top).mul_(attention)), dim=-1)
        grad_locations = grad_frac.mul_(  # d frac / d loc = (W, H)
            _level_sizes(levels, frac.dtype, frac.device, heads=frac.shape[2], points=frac.shape[4]))
    return grad_locations, grad_attention


def sparse_forward(value: Tensor, locations: Tensor, attention: Tensor, levels: _Levels,
                   ) -> tuple[Tensor, Tensor, _Taps]:
    """The forward gather-sum: ``(N, Lq, M * D)``, plus the padded value and the taps its backward reads."""
    n, _, heads, channels = value.shape
    queries = locations.shape[1]
    padded = levels.pad(value)
    taps = _taps(levels, locations, attention)
    count = taps.index.shape[0]
    if taps.index.numel():
        out = F.embedding_bag(taps.index.view(count, -1), padded.view(-1, channels),
                              per_sample_weights=taps.weight.view(count, -1), mode="sum")
    else:
        out = value.new_zeros(count, channels)
    return out.view(n, queries, heads * channels), padded, taps


def sparse_backward(grad_out: Tensor, padded: Tensor, attention: Tensor, taps: _Taps, levels: _Levels, length: int,
                    needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of `sparse_forward`'s output w.r.t. value, locations and attention (None where ``needs`` is
    False); ``length`` is the caller's ``S``."""
    n, padded_length, heads, channels = padded.shape
    grad = grad_out.reshape(-1, channels).contiguous()  # (B, D)
    need_value, need_locations, need_attention = needs
    empty = taps.index.numel() == 0
    grad_value = grad_locations = grad_attention = None
    # backward() may run inside an autocast region, whose state these ops would inherit: they compute
    # in the forward's dtype, as the forward did (see multi_scale_deformable_attention).
    with autocast_disabled(grad.device):
        if need_locations or need_attention:
            dots = torch.zeros_like(taps.weight) if empty else _sampled_dots(
                taps.index.view(taps.index.shape[0], -1), grad, padded.view(-1, channels))
            grad_locations, grad_attention = _point_grads(dots, taps.frac, attention, levels, need_locations,
                                                          need_attention)
            del dots  # free before the value gradient's buffers
        if need_value:
            rows = n * padded_length * heads
            padded_grad = grad.new_zeros(rows, channels) if empty else _scatter_rows(taps.index, taps.weight, grad,
                                                                                      rows)
            grad_value = levels.unpad(padded_grad.view(n, padded_length, heads, channels), length)
    return grad_value, grad_locations, grad_attention


class _SparseMSDA(torch.autograd.Function):
    """Gather-sum over bilinear taps; the backward never materialises per-tap value rows either."""

    @staticmethod
    def forward(ctx: FunctionCtx, value: Tensor, locations: Tensor, attention: Tensor, levels: _Levels) -> Tensor:
        out, padded, taps = sparse_forward(value, locations, attention, levels)
        ctx.save_for_backward(padded, attention, taps.index, taps.weight, taps.frac)
        ctx.levels, ctx.length = levels, value.shape[1]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        padded, attention, index, weight, frac = ctx.saved_tensors
        grads = sparse_backward(grad_out, padded, attention, _Taps(index, weight, frac), ctx.levels, ctx.length,
                                ctx.needs_input_grad[:3])
        return (*grads, None)


def level_layout(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor) -> _Levels:
    """The level layout as Python numbers; ValueError when a level does not fit in ``value``."""
    levels = _Levels.of(spatial_shapes.tolist(), level_start_index.tolist())
    for (height, width), start in zip(levels.shapes, levels.starts):
        if start < 0 or start + height * width > value.shape[1]:
            raise ValueError(f"level of shape {(height, width)} starting at row {start} does not fit in "
                             f"value's {value.shape[1]} rows")
    return levels


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Fast pure-PyTorch multi-scale deformable attention; same contract as `ms_deform_attn_reference`.

    All three float inputs must share one dtype, float32 or float64 (`multi_scale_deformable_attention`
    casts). Raises ValueError when a level does not fit in ``value``.
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
    levels = level_layout(value, spatial_shapes, level_start_index)
    return _SparseMSDA.apply(value, sampling_locations, attention_weights, levels)
