"""Feature regression on matched queries, for every decoder layer the set loss matched.

UP-DETR reconstructs each patch's backbone feature (MSE of L2-normalised vectors) on every decoder layer;
DetReg regresses each proposal's teacher embedding (L1) on the last layer (or, as an option, every layer).
Both put the loss on the queries the Hungarian matcher paired with a target, each layer with its own
matching.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.matcher import MatchIndices

FeatureLoss = Literal["normalized_mse", "l1"]


def layer_of_suffix(suffix: str, num_layers: int) -> int | None:
    """Decoder layer scored under a criterion term suffix: ``""`` the last, ``"_i"`` layer i, else None."""
    if suffix == "":
        return num_layers - 1
    index = suffix[1:]
    return int(index) if index.isdigit() else None


def matched_feature_loss(predictions: Tensor, targets: list[Tensor], indices: MatchIndices,
                         num_boxes: float | None, kind: FeatureLoss) -> Tensor:
    """Loss between the predicted features of matched queries and their targets' features.

    Args:
        predictions: ``(B, Q, E)`` features predicted by every query.
        targets: per image ``(K_i, E)`` target features.
        indices: per image ``(query_idx, target_idx)`` from the matcher.
        num_boxes: normaliser (targets in the batch, averaged over processes); None: the number of matched
            pairs here, i.e. the mean over matched pairs (DetReg's released reduction; 0 without any pair).
        kind: ``normalized_mse``: squared distance of the L2-normalised vectors, summed over dims (0 for
            parallel features, at most 4); ``l1``: mean absolute difference over dims.
    Returns:
        scalar: summed over matched pairs / ``num_boxes`` (or averaged over them).

    >>> pred = torch.ones(1, 2, 3); target = [torch.ones(1, 3)]
    >>> float(matched_feature_loss(pred, target, [(torch.tensor([1]), torch.tensor([0]))], 1.0, "l1"))
    0.0
    """
    batch_idx = torch.cat([torch.full_like(query, image) for image, (query, _) in enumerate(indices)])
    query_idx = torch.cat([query for query, _ in indices])
    matched = predictions[batch_idx.to(predictions.device), query_idx.to(predictions.device)].float()
    wanted = torch.cat([t[target.to(t.device)] for t, (_, target) in zip(targets, indices)]).to(matched)
    if kind == "normalized_mse":
        per_pair = (F.normalize(matched, dim=-1) - F.normalize(wanted, dim=-1)).pow(2).sum(-1)
    elif kind == "l1":
        per_pair = (matched - wanted).abs().mean(-1)
    else:
        raise ValueError(f"unknown feature loss {kind!r}")
    if num_boxes is None:
        num_boxes = max(len(per_pair), 1)
    return per_pair.sum() / num_boxes


def all_layers_feature_loss(predictions: Tensor, targets: list[Tensor], layer_indices: dict[str, MatchIndices],
                            num_boxes: float | None, kind: FeatureLoss, name: str) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`matched_feature_loss` for every decoder layer in ``layer_indices`` (the encoder's is skipped).

    Args:
        predictions: ``(L, B, Q, E)`` per decoder layer.
    Returns:
        (sum over layers, unweighted detached terms ``{name}{suffix}`` for logging).
    """
    total = predictions.new_zeros((), dtype=torch.float32)
    terms: dict[str, Tensor] = {}
    for suffix, indices in layer_indices.items():
        layer = layer_of_suffix(suffix, predictions.shape[0])
        if layer is None:
            continue
        loss = matched_feature_loss(predictions[layer], targets, indices, num_boxes, kind)
        total = total + loss
        terms[f"{name}{suffix}"] = loss.detach()
    return total, terms
