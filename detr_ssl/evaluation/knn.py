"""k-nearest-neighbour classification of object crops: how good a frozen backbone's features are.

The standard probe of self-supervised representations without training anything: embed labelled crops
with the frozen encoder, then label each query crop by a vote of its ``k`` most cosine-similar bank crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ssl.datasets import CocoDetection
from detr_ssl.models.crops import crop_and_resize, normalized_cxcywh_to_abs_xyxy

__all__ = ["knn_accuracy", "knn_probe", "object_crop_embeddings"]


@torch.no_grad()
def object_crop_embeddings(encoder: nn.Module, dataset: CocoDetection, crop_size: int = 64,
                           context: float = 0.1) -> tuple[Tensor, Tensor]:
    """Every annotated object of ``dataset`` (with eval transforms), cropped with ``context`` of its size
    added on each side, resized to ``crop_size`` and embedded by ``encoder`` (``(N, 3, S, S) -> (N, D)``).

    Returns ``(features (M, D), labels (M,))`` over all objects, labels as the dataset's class indices.
    """
    features, labels = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        if len(target["boxes"]) == 0:
            continue
        boxes = normalized_cxcywh_to_abs_xyxy(target["boxes"], target["size"])
        margin = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2) * context
        boxes = boxes + margin * torch.tensor([-1.0, -1.0, 1.0, 1.0])
        features.append(encoder(crop_and_resize(image[None], [boxes], crop_size)))
        labels.append(target["labels"])
    return torch.cat(features), torch.cat(labels)


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, k: int = 5) -> float:
    """Top-1 accuracy of a cosine-similarity k-NN majority vote (ties go to the nearest neighbour's class)."""
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError("k-NN needs a non-empty bank and query set")
    k = min(k, len(bank))
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    nearest = similarity.topk(k, dim=1).indices
    votes = F.one_hot(bank_labels[nearest], int(bank_labels.max()) + 1).sum(dim=1).float()
    # A small bonus for the nearest neighbour's class breaks ties in its favour.
    votes += 0.5 * F.one_hot(bank_labels[nearest[:, 0]], votes.shape[1]).float()
    return float((votes.argmax(dim=1) == query_labels).float().mean())


def knn_probe(encoder: nn.Module, bank: CocoDetection, queries: CocoDetection, ks: Sequence[int] = (1, 5, 20),
              crop_size: int = 64) -> dict[str, float]:
    """``{"top1@k=1": ..., ...}``: k-NN accuracy of ``queries``' object crops against ``bank``'s, embedded
    by the frozen ``encoder``, for every ``k`` in ``ks``."""
    bank_features, bank_labels = object_crop_embeddings(encoder, bank, crop_size)
    query_features, query_labels = object_crop_embeddings(encoder, queries, crop_size)
    return {f"top1@k={k}": knn_accuracy(bank_features, bank_labels, query_features, query_labels, k) for k in ks}
