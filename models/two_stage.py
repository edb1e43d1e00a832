"""Two-stage Deformable DETR: encoder pixels propose boxes, the top ones become the decoder's queries."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detr_ssl.models.deformable_transformer import level_pixels
from detr_ssl.models.outputs import DetectionOutput


def encoder_proposals(padding_mask: Tensor, spatial_shapes: Tensor) -> tuple[Tensor, Tensor]:
    """One square proposal per encoder pixel, centred on it, side ``0.05 * 2**level`` of the image.

    Args:
        padding_mask: ``(B, S)`` True on padded pixels.
        spatial_shapes: ``(L, 2)`` (H, W) per level.
    Returns:
        proposals ``(B, S, 4)`` in logit space (``+inf`` where unusable) and usable ``(B, S)`` bool.
    """
    level, column, row = level_pixels(spatial_shapes, padding_mask.shape[1])
    # Valid (unpadded) rows and columns of each level: the unpadded pixels of its first column and first row,
    # counted in integers (exact, whatever autocast does to float reductions).
    in_level = level[:, None] == torch.arange(spatial_shapes.shape[0], device=level.device)  # (S, L)
    unpadded = ~padding_mask[:, :, None]  # (B, S, 1)
    valid_h = (unpadded & in_level & (column == 0)[:, None]).sum(1)  # (B, L)
    valid_w = (unpadded & in_level & (row == 0)[:, None]).sum(1)
    scale = torch.stack((valid_w, valid_h), dim=-1).clamp(min=1).float()[:, level]  # (B, S, 2)
    centres = (torch.stack((column, row), dim=-1).float() + 0.5) / scale
    sizes = (0.05 * 2.0 ** level.float())[None, :, None].expand_as(centres)
    boxes = torch.cat((centres, sizes), dim=-1)
    usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1) & ~padding_mask
    logits = torch.log(boxes / (1 - boxes)).masked_fill(~usable[..., None], float("inf"))
    return logits, usable


def box_position_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of each box coordinate: ``(B, Q, 4)`` in [0, 1] -> ``(B, Q, 4 * num_feats)``."""
    dim = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    freq = temperature ** (2 * torch.div(dim, 2, rounding_mode="floor") / num_feats)
    angles = boxes.float()[..., None] * 2 * math.pi / freq
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(2)


class ProposalQuerySelector(nn.Module):
    """Scores every encoder pixel's proposal with the given heads (the detector's last pair: its own with
    box refinement, otherwise the decoder's shared heads) and turns the top ``num_queries`` into reference
    boxes and query embeddings."""

    def __init__(self, hidden_dim: int, num_queries: int, class_head: nn.Module, box_head: nn.Module) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.memory_proj = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.query_proj = nn.Sequential(nn.Linear(2 * hidden_dim, 2 * hidden_dim), nn.LayerNorm(2 * hidden_dim))
        self.class_head = class_head
        self.box_head = box_head
        self.hidden_dim = hidden_dim

    def forward(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: Tensor
                ) -> tuple[DetectionOutput, Tensor, Tensor, Tensor]:
        """memory ``(B, S, D)`` -> (encoder output for the loss, reference boxes ``(B, Q, 4)``,
        target ``(B, Q, D)``, query position ``(B, Q, D)``)."""
        proposals, usable = encoder_proposals(padding_mask, spatial_shapes)
        features = self.memory_proj(memory.masked_fill(~usable[..., None], 0.0))
        logits = self.class_head(features)
        box_logits = self.box_head(features) + proposals
        scores = logits[..., 0].masked_fill(~usable, float("-inf"))
        k = min(self.num_queries, scores.shape[1])
        top = scores.topk(k, dim=1).indices
        top_boxes = box_logits.gather(1, top[..., None].expand(-1, -1, 4)).detach().sigmoid()
        embedding = self.query_proj(box_position_embedding(top_boxes, self.hidden_dim // 2))
        query_pos, tgt = embedding.split(self.hidden_dim, dim=-1)
        encoder_out = DetectionOutput(logits=logits, boxes=box_logits.sigmoid())
        return encoder_out, top_boxes, tgt, query_pos
