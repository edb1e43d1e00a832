"""Sine positional encoding of 2-D feature maps (the DETR / Deformable DETR variant)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinePositionEncoding(nn.Module):
    """Encodes each pixel's (y, x) position among the *valid* (unpadded) pixels with sines and cosines.

    Coordinates are cumulative counts over the non-padded area, normalised to ``[0, 2*pi]`` so that an
    image gets the same encoding whatever padding the batch added.

    Args:
        num_pos_feats: features per axis; the output has ``2 * num_pos_feats`` channels (= hidden dim).
        temperature: base of the geometric frequency progression.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, mask: Tensor) -> Tensor:
        """mask ``(B, H, W)`` bool, True on padding -> position encoding ``(B, 2*num_pos_feats, H, W)``."""
        valid = (~mask).to(torch.float32)
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        eps = 1e-6
        # Deformable DETR shifts to pixel centres (-0.5) before normalising by the valid extent.
        y = (y - 0.5) / (y[:, -1:, :] + eps) * 2 * math.pi
        x = (x - 0.5) / (x[:, :, -1:] + eps) * 2 * math.pi
        dim = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        freq = self.temperature ** (2 * torch.div(dim, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = self._interleave(x[..., None] / freq)
        pos_y = self._interleave(y[..., None] / freq)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _interleave(angles: Tensor) -> Tensor:
        """sin on even, cos on odd feature indices: ``(B, H, W, F) -> (B, H, W, F)``."""
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)
