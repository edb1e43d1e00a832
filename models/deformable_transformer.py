"""Deformable encoder and decoder layers (Zhu et al., 2021), built on the MSDA op.

Shapes: ``B`` batch, ``S`` flattened pixels over all levels, ``Q`` queries, ``L`` feature levels,
``D`` hidden dim. Reference points are normalised to ``[0, 1]`` of the *valid* image area and are
rescaled per level by ``valid_ratios`` ``(B, L, 2)`` (the unpadded fraction of each map, as (w, h)).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detr_ssl.models.dropout import Dropout
from detr_ssl.models.msda import MSDeformAttn


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with both tails clamped, so boxes at 0 or 1 stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def level_pixels(spatial_shapes: Tensor, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Level, column and row of each of the first ``length`` pixels of the levels ``spatial_shapes`` ``(L, 2)``
    (H, W), flattened row-major and concatenated in order: three ``(length,)`` int64 tensors.

    Tensor arithmetic on ``spatial_shapes``, no loop over its values: an exported graph (where the level
    sizes are computed from the image size) stays right for any image size.
    """
    areas = spatial_shapes.prod(1)
    ends = areas.cumsum(0)
    pixel = torch.arange(length, device=spatial_shapes.device)
    level = (pixel[:, None] >= ends).sum(1)  # levels that end at or before the pixel
    local = pixel - (ends - areas)[level]
    width = spatial_shapes[level, 1]
    row = torch.div(local, width, rounding_mode="floor")
    return level, local - row * width, row


class FeedForward(nn.Module):
    """Post-norm residual MLP: ``norm(x + dropout(W2 dropout(relu(W1 x))))``."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.ReLU(inplace=True), Dropout(dropout),
            nn.Linear(ffn_dim, d_model), Dropout(dropout),
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then the feed-forward block."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int, backend: str) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=backend)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, padding_mask: Tensor) -> Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    """``num_layers`` copies of ``layer``.

    With ``checkpointing`` (activation checkpointing), training keeps only each layer's input: its
    activations are recomputed during the backward pass (``torch.utils.checkpoint``, non-reentrant, the
    dropout masks replayed), trading one more encoder forward for the memory of the encoder's
    activations, a large part of the detector's since every pixel of every level is a query.
    """

    def __init__(self, layer: EncoderLayer, num_layers: int, checkpointing: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.checkpointing = checkpointing

    @staticmethod
    def reference_points(spatial_shapes: Tensor, valid_ratios: Tensor, length: int) -> Tensor:
        """Every pixel centre of every level (``length`` = ``S`` pixels), as seen from every level: ``(B, S, L, 2)``."""
        level, column, row = level_pixels(spatial_shapes, length)
        sizes = spatial_shapes.flip(1)[level].to(valid_ratios.dtype)  # (S, 2) as (W, H)
        centres = torch.stack((column, row), dim=-1).to(valid_ratios.dtype) + 0.5
        points = centres / (valid_ratios[:, level] * sizes)  # (B, S, 2) in [0, 1] of the valid area
        return points[:, :, None] * valid_ratios[:, None]

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                valid_ratios: Tensor, padding_mask: Tensor) -> Tensor:
        """src, pos ``(B, S, D)`` -> memory ``(B, S, D)``."""
        reference_points = self.reference_points(spatial_shapes, valid_ratios, src.shape[1])
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            inputs = (src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
            src = checkpoint(layer, *inputs, use_reentrant=False) if recompute else layer(*inputs)
        return src


class DecoderLayer(nn.Module):
    """Query self-attention (optionally masked), deformable cross-attention into the memory, feed-forward."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int, backend: str) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout_self = Dropout(dropout)
        self.norm_self = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=backend)
        self.dropout_cross = Dropout(dropout)
        self.norm_cross = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, memory_padding_mask: Tensor,
                self_attn_mask: Tensor | None = None) -> Tensor:
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm_self(tgt + self.dropout_self(attended))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                                   level_start_index, memory_padding_mask)
        tgt = self.norm_cross(tgt + self.dropout_cross(attended))
        return self.ffn(tgt)


class DeformableDecoder(nn.Module):
    """Decoder layers that also predict a box per layer.

    Each layer's box is ``sigmoid(box_head(h) + logit(reference))`` (for 2-d references only the
    centre is offset). With ``refine`` (iterative box refinement) that box, detached, becomes the
    next layer's reference; otherwise every layer keeps the initial reference.
    """

    def __init__(self, layer: DecoderLayer, num_layers: int, box_heads: nn.ModuleList, refine: bool) -> None:
        super().__init__()
        if len(box_heads) < num_layers:
            raise ValueError(f"need a box head per decoder layer, got {len(box_heads)} for {num_layers}")
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.box_heads = box_heads
        self.refine = refine

    def forward(self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                memory_padding_mask: Tensor, self_attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tgt, query_pos ``(B, Q, D)``; reference_points ``(B, Q, 2 or 4)`` ->
        hidden states ``(L_dec, B, Q, D)`` and boxes ``(L_dec, B, Q, 4)``."""
        hidden, boxes = [], []
        for layer, box_head in zip(self.layers, self.box_heads):
            scale = valid_ratios if reference_points.shape[-1] == 2 else valid_ratios.repeat(1, 1, 2)
            tgt = layer(tgt, query_pos, reference_points[:, :, None] * scale[:, None], memory, spatial_shapes,
                        level_start_index, memory_padding_mask, self_attn_mask)
            offset = inverse_sigmoid(reference_points)
            if offset.shape[-1] == 2:
                offset = torch.cat((offset, torch.zeros_like(offset)), dim=-1)
            box = (box_head(tgt) + offset).sigmoid()
            if self.refine:
                reference_points = box.detach()
            hidden.append(tgt)
            boxes.append(box)
        return torch.stack(hidden), torch.stack(boxes)
