"""InfoNCE (shared and per-query negatives) and the negative-cosine prediction loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detr_ssl.losses.contrastive import info_nce, negative_cosine


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_is_the_cross_entropy_with_the_positive_first() -> None:
    query, positive, negatives = _unit(4, 6, seed=0), _unit(4, 6, seed=1), _unit(5, 6, seed=2)
    loss = info_nce(query, positive, negatives, 0.2)

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    total = 0.0
    for q, k in zip(query.tolist(), positive.tolist()):
        logits = [dot(q, k) / 0.2] + [dot(q, n) / 0.2 for n in negatives.tolist()]
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    torch.testing.assert_close(loss, torch.tensor(total / 4))


def test_info_nce_is_bitwise_densecl_formula() -> None:
    # DenseCL's numbers must not change when it switches to this function.
    query, positive, queue = _unit(8, 5, seed=3), _unit(8, 5, seed=4), _unit(11, 5, seed=5)
    logits = torch.cat(((query * positive).sum(dim=1, keepdim=True), query @ queue.T), dim=1) / 0.07
    expected = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert torch.equal(info_nce(query, positive, queue, 0.07), expected)


def test_info_nce_with_per_query_negatives() -> None:
    query, positive, negatives = _unit(3, 4, seed=6), _unit(3, 4, seed=7), _unit(3, 5, 4, seed=8)
    loss = info_nce(query, positive, negatives, 0.5)
    per_query = torch.stack([info_nce(query[i:i + 1], positive[i:i + 1], negatives[i], 0.5) for i in range(3)])
    torch.testing.assert_close(loss, per_query.mean())
    shared = info_nce(query, positive, negatives[0], 0.5)
    assert not torch.allclose(loss, shared)


def test_info_nce_is_minimal_for_matching_positives_and_orthogonal_negatives() -> None:
    eye = torch.eye(6)
    query, negatives = eye[:2], eye[2:]
    best = info_nce(query, query, negatives, 0.1)
    # Positive logit 10, four negatives at 0: -log(e^10 / (e^10 + 4)).
    torch.testing.assert_close(best, torch.tensor(math.log1p(4 * math.exp(-10))))
    worse = info_nce(query, F.normalize(query + eye[2:4], dim=1), negatives, 0.1)
    assert worse > best


def test_negative_cosine_of_aligned_and_opposite_vectors() -> None:
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(negative_cosine(x, 3 * x), torch.tensor(-1.0))
    torch.testing.assert_close(negative_cosine(x, -x), torch.tensor(1.0))
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(negative_cosine(orthogonal, orthogonal.flip(1)), torch.tensor(0.0))


def test_negative_cosine_along_the_channel_dimension_of_maps() -> None:
    prediction, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected = -F.cosine_similarity(prediction, target, dim=1).mean()
    torch.testing.assert_close(negative_cosine(prediction, target, dim=1), expected)


def test_negative_cosine_gradient_reaches_the_target_only_if_not_detached() -> None:
    prediction = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3, requires_grad=True)
    negative_cosine(prediction, target.detach()).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0 and target.grad is None
    negative_cosine(prediction, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
