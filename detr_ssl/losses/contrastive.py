"""Contrastive and predictive objectives shared by the self-supervised tasks.

- :func:`info_nce`: MoCo's InfoNCE with shared (a queue) or per-query negatives; numerically identical to
  DenseCL's loss for shared negatives.
- :func:`negative_cosine`: BYOL / SimSiam / DenseSiam's prediction loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["info_nce", "negative_cosine"]


def info_nce(query: Tensor, positive_key: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Mean over the ``N`` queries of the cross-entropy of ``[q.k+, q.n_1, ..., q.n_K] / temperature``
    with the positive at index 0. Embeddings are expected L2-normalised (dot products are cosines).

    Args:
        query: ``(N, D)`` embeddings.
        positive_key: ``(N, D)`` the positive of each query.
        negatives: ``(K, D)`` negatives shared by every query (a queue), or ``(N, K, D)`` one set per query.
        temperature: softmax temperature.
    """
    positive = (query * positive_key).sum(dim=1, keepdim=True)
    if negatives.dim() == 3:
        negative = (negatives @ query.unsqueeze(-1)).squeeze(-1)
    else:
        negative = query @ negatives.T
    logits = torch.cat((positive, negative), dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


def negative_cosine(prediction: Tensor, target: Tensor, dim: int = -1) -> Tensor:
    """Mean over all pairs of ``-cos(prediction, target)``, vectors along ``dim``: -1 when aligned, 1 when
    opposite. Inputs need not be normalised. Gradient flows into both arguments: the caller detaches
    ``target`` (BYOL, SimSiam's stop-gradient) when only the prediction should learn."""
    return -(F.normalize(prediction, dim=dim) * F.normalize(target, dim=dim)).sum(dim=dim).mean()
