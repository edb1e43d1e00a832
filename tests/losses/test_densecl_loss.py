"""DenseCL's pure pieces: backbone-feature correspondence and InfoNCE against a queue."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detr_ssl.losses.contrastive import info_nce
from detr_ssl.losses.densecl import dense_correspondence, dense_info_nce


def test_correspondence_recovers_a_permutation_of_rescaled_locations() -> None:
    """Key location j holds query location perm[j], rescaled: query location s must match inverse_perm[s]."""
    torch.manual_seed(0)
    batch, locations, channels = 3, 10, 16
    query = torch.randn(batch, locations, channels)
    perms = torch.stack([torch.randperm(locations) for _ in range(batch)])
    scales = torch.empty(batch, locations, 1).uniform_(0.1, 10.0)  # cosine similarity ignores them
    key = torch.stack([query[b, perms[b]] for b in range(batch)]) * scales
    assert torch.equal(dense_correspondence(query, key), perms.argsort(dim=1))


def test_correspondence_uses_cosine_similarity_not_dot_product() -> None:
    query = torch.tensor([[[1.0, 0.0]]])
    key = torch.tensor([[[1.0, 0.1], [5.0, 5.0]]])  # dot products 1 and 5; cosines 0.995 and 0.707
    assert dense_correspondence(query, key).tolist() == [[0]]


def test_info_nce_equals_hand_computed_cross_entropy() -> None:
    torch.manual_seed(0)
    query, positive, queue = (F.normalize(torch.randn(n, 8, dtype=torch.float64), dim=1) for n in (4, 4, 5))
    temperature = 0.2
    expected = 0.0
    for q, k in zip(query.tolist(), positive.tolist()):
        logits = [sum(a * b for a, b in zip(q, key)) / temperature for key in [k, *queue.tolist()]]
        expected += -logits[0] + math.log(sum(math.exp(logit) for logit in logits))
    expected /= len(query)
    assert math.isclose(float(info_nce(query, positive, queue, temperature)), expected, rel_tol=1e-12)


def test_dense_info_nce_scores_each_location_against_its_matched_key() -> None:
    """Keys shuffled per image plus the correspondence that undoes the shuffle = unshuffled keys."""
    torch.manual_seed(0)
    batch, locations, dim = 2, 6, 8
    query, key = (F.normalize(torch.randn(batch, locations, dim), dim=2) for _ in range(2))
    queue = F.normalize(torch.randn(5, dim), dim=1)
    perms = torch.stack([torch.randperm(locations) for _ in range(batch)])
    shuffled = torch.stack([key[b, perms[b]] for b in range(batch)])
    loss = dense_info_nce(query, shuffled, perms.argsort(dim=1), queue, temperature=0.2)
    expected = info_nce(query.flatten(0, 1), key.flatten(0, 1), queue, temperature=0.2)
    torch.testing.assert_close(loss, expected)
