"""DenseCL's objective: InfoNCE against a queue of negatives, globally and per location.

Following Wang et al., "Dense Contrastive Learning for Self-Supervised Visual Pre-Training" (CVPR 2021):
the global term is MoCo v2's InfoNCE between two views of an image; the dense term applies the same
loss to every location of the query view, whose positive key is the key-view location most similar to it
in the *backbone* feature maps (cosine similarity, argmax), not in the projected embeddings.

Every function expects L2-normalised embeddings, so dot products are cosine similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.losses.contrastive import info_nce

__all__ = ["dense_correspondence", "dense_info_nce"]


@torch.no_grad()
def dense_correspondence(query_features: Tensor, key_features: Tensor) -> Tensor:
    """For each query-view location, the key-view location whose feature vector is most cosine-similar.

    Args:
        query_features: ``(B, S, C)`` backbone features of the query view, locations flattened.
        key_features: ``(B, T, C)`` backbone features of the key view (same images, same order).

    Returns:
        ``(B, S)`` indices into the ``T`` key locations (no gradient: the matching is a hard assignment).
    """
    similarity = F.normalize(query_features, dim=-1) @ F.normalize(key_features, dim=-1).transpose(1, 2)
    return similarity.argmax(dim=2)


def dense_info_nce(query: Tensor, key: Tensor, correspondence: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of every query location against its corresponding key location, averaged over locations.

    Args:
        query: ``(B, S, D)`` dense embeddings of the query view.
        key: ``(B, T, D)`` dense embeddings of the key view.
        correspondence: ``(B, S)`` key location of each query location (:func:`dense_correspondence`).
        queue: ``(K, D)`` negatives shared by every location.
        temperature: softmax temperature.
    """
    index = correspondence.unsqueeze(-1).expand(-1, -1, key.shape[-1])
    positives = key.gather(1, index)
    return info_nce(query.flatten(0, 1), positives.flatten(0, 1), queue, temperature)
