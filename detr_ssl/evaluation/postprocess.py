"""From model outputs to per-image detections in original-image pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from detr_ssl.box_ops import cxcywh_to_xyxy
from detr_ssl.models.outputs import DetectionOutput

__all__ = ["postprocess"]


@torch.no_grad()
def postprocess(output: DetectionOutput, orig_sizes: Tensor, top_k: int = 100) -> list[dict[str, Tensor]]:
    """The ``top_k`` highest-scoring (query, class) pairs of each image.

    With sigmoid scores every class of every query is a candidate detection, so the top-k runs over the
    flattened ``Q * C`` scores (one query may yield several classes), as Deformable DETR evaluates.

    Args:
        output: ``logits (B, Q, C)``, ``boxes (B, Q, 4)`` cxcywh normalised to the unpadded image.
        orig_sizes: ``(B, 2)`` (H, W) of each original image; normalised boxes scale to it directly.
        top_k: detections kept per image (capped at ``Q * C``); 100 is COCO's ``maxDets``.
    Returns:
        per image ``{"scores": (k,) float32, "labels": (k,) int64 in 0..C-1,
        "boxes": (k, 4) float32 absolute xyxy of the original image}``, sorted by decreasing score.

    >>> out = DetectionOutput(logits=torch.tensor([[[-5.0, 3.0]]]), boxes=torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]))
    >>> postprocess(out, torch.tensor([[100, 200]]), top_k=1)[0]["boxes"]
    tensor([[ 50.,  25., 150.,  75.]])
    """
    logits, boxes = output.logits, output.boxes
    batch, num_queries, num_classes = logits.shape
    if orig_sizes.shape != (batch, 2):
        raise ValueError(f"orig_sizes must be (B, 2) = ({batch}, 2), got {tuple(orig_sizes.shape)}")
    scores, flat_index = logits.float().sigmoid().flatten(1).topk(min(top_k, num_queries * num_classes), dim=1)
    query = torch.div(flat_index, num_classes, rounding_mode="floor")
    labels = flat_index % num_classes
    picked = boxes.float().gather(1, query[..., None].expand(-1, -1, 4))
    height, width = orig_sizes.to(picked).unbind(-1)
    scale = torch.stack((width, height, width, height), dim=-1)[:, None, :]
    xyxy = cxcywh_to_xyxy(picked) * scale
    return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, xyxy)]
