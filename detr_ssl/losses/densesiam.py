"""DenseSiam's two similarity terms on features already aligned to a shared grid (Zhang et al., ECCV 2022).

- PixSim compares every cell of one view with the same cell of the other: negative cosine
  (:func:`~detr_ssl.losses.contrastive.negative_cosine`, the paper's pretraining loss) or the soft
  cross-entropy of the released segmentation code (:func:`soft_cross_entropy`).
- RegionSim pools ``K`` region embeddings per view with the projector's softmax over its ``K`` channels as
  soft masks (:func:`region_embeddings`) and contrasts them (:func:`region_info_nce`): region ``k`` of one
  view against the ``K`` regions of the other view of the same image, the positive being region ``k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.blocks.pooling import masked_average_pool
from detr_ssl.losses.contrastive import info_nce
from detr_ssl.tasks.options.densesiam import RegionPooling

__all__ = ["RegionPooling", "region_embeddings", "region_info_nce", "soft_cross_entropy"]

def soft_cross_entropy(prediction: Tensor, target: Tensor, dim: int = 1) -> Tensor:
    """Mean over positions of ``-sum softmax(target) * log_softmax(prediction)`` along ``dim`` (the
    released ``CESimilarity``). The caller detaches ``target`` for a stop-gradient."""
    return -(F.softmax(target, dim=dim) * F.log_softmax(prediction, dim=dim)).sum(dim=dim).mean()


def region_embeddings(features: Tensor, logits: Tensor, pooling: RegionPooling = "sum") -> Tensor:
    """``(B, K, C)`` one embedding per soft mask ``softmax(logits)`` over the ``K`` channels.

    Args:
        features: ``(B, C, H, W)`` features.
        logits: ``(B, K, H, W)`` the projector's output on the same grid; its softmax over ``K`` gives every
            cell a distribution over the regions.
        pooling: ``"sum"``: ``sum_hw mask * feature`` (the released ``kernel_contrast``); ``"mean"``: that
            sum divided by the mask's total (:func:`~detr_ssl.blocks.pooling.masked_average_pool`).
    """
    masks = logits.softmax(dim=1)
    if pooling == "mean":
        return masked_average_pool(features, masks)
    if pooling != "sum":
        raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
    return torch.einsum("bkhw,bchw->bkc", masks, features)


def region_info_nce(query: Tensor, key: Tensor, temperature: float) -> Tensor:
    """InfoNCE of every region ``k`` of ``query`` ``(B, K, D)`` against the ``K`` regions of ``key`` of the
    same image: ``key[b, k]`` is the positive, the other ``K - 1`` regions of image ``b`` the negatives.
    Both are L2-normalised here; gradient flows into both (the release detaches neither)."""
    batch, regions, dim = query.shape
    query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    others = torch.arange(regions, device=key.device).expand(regions, regions)
    others = others[~torch.eye(regions, dtype=torch.bool, device=key.device)].view(regions, regions - 1)
    negatives = key[:, others].reshape(batch * regions, regions - 1, dim)
    return info_nce(query.reshape(-1, dim), key.reshape(-1, dim), negatives, temperature)
