"""The Hungarian matcher finds the optimal assignment of a cost written out independently here."""

from __future__ import annotations

import math

import pytest
import torch
from assignment_reference import brute_force_best

from detr_ssl.matcher import HungarianMatcher


def reference_cost(box: list[float], label_logit: float, target: list[float], matcher: HungarianMatcher) -> float:
    """One (query, target) matching cost, written scalar by scalar from the Deformable DETR formulas."""
    alpha, gamma = matcher.focal.alpha, matcher.focal.gamma
    p = 1 / (1 + math.exp(-label_logit))
    positive = alpha * (1 - p) ** gamma * -math.log(p)
    negative = (1 - alpha) * p**gamma * -math.log(1 - p)
    l1 = sum(abs(a - b) for a, b in zip(box, target))

    def corners(b: list[float]) -> list[float]:
        return [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]

    a, b = corners(box), corners(target)
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    giou = inter / union - (hull - union) / hull
    return matcher.cost_class * (positive - negative) + matcher.cost_bbox * l1 - matcher.cost_giou * giou


def random_case(generator: torch.Generator, num_queries: int, sizes: list[int], num_classes: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    def boxes(n: int) -> torch.Tensor:
        return torch.cat((torch.rand(n, 2, generator=generator) * 0.6 + 0.2,
                          torch.rand(n, 2, generator=generator) * 0.3 + 0.05), dim=-1)

    batch = len(sizes)
    logits = torch.randn(batch, num_queries, num_classes, generator=generator) * 2
    pred = boxes(batch * num_queries).view(batch, num_queries, 4)
    targets = [{"labels": torch.randint(num_classes, (k,), generator=generator), "boxes": boxes(k)} for k in sizes]
    return logits, pred, targets


def image_cost(logits: torch.Tensor, boxes: torch.Tensor, target: dict[str, torch.Tensor],
               matcher: HungarianMatcher) -> list[list[float]]:
    return [[reference_cost(boxes[q].tolist(), float(logits[q, int(label)]), tbox, matcher)
             for label, tbox in zip(target["labels"], target["boxes"].tolist())]
            for q in range(len(logits))]


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_optimum(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.3, focal_gamma=1.5)
    sizes = [[3, 1], [5], [2, 0, 4], [1, 6], [4, 4], [0, 3, 5]][seed]
    logits, boxes, targets = random_case(generator, num_queries=5, sizes=sizes)

    matches = matcher(logits, boxes, targets)

    assert len(matches) == len(targets)
    for image, ((query_idx, target_idx), target) in enumerate(zip(matches, targets)):
        num_targets = len(target["labels"])
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(target_idx) == min(5, num_targets)
        assert torch.equal(query_idx, query_idx.sort().values)
        assert len(set(query_idx.tolist())) == len(query_idx)
        assert len(set(target_idx.tolist())) == len(target_idx)
        if num_targets == 0:
            continue
        cost = image_cost(logits[image], boxes[image], target, matcher)
        total = sum(cost[q][k] for q, k in zip(query_idx.tolist(), target_idx.tolist()))
        assert total == pytest.approx(brute_force_best(cost), rel=1e-5, abs=1e-5)


def test_cost_matrix_equals_scalar_reference() -> None:
    generator = torch.Generator().manual_seed(7)
    matcher = HungarianMatcher()
    logits, boxes, targets = random_case(generator, num_queries=4, sizes=[3])
    cost = matcher.cost_matrix(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"])
    expected = torch.tensor(image_cost(logits[0], boxes[0], targets[0], matcher))
    torch.testing.assert_close(cost, expected, rtol=1e-5, atol=1e-5)


def test_obvious_match_follows_boxes_and_classes() -> None:
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]]])
    logits = torch.full((1, 3, 2), -4.0)
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.8, 0.8, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]])}]
    query_idx, target_idx = HungarianMatcher()(logits, boxes, targets)[0]
    assert query_idx.tolist() == [0, 1]
    assert target_idx.tolist() == [1, 0]


def test_all_images_empty() -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[0, 0])
    for query_idx, target_idx in HungarianMatcher()(logits, boxes, targets):
        assert query_idx.shape == target_idx.shape == (0,)
        assert query_idx.dtype == torch.int64


def test_more_targets_than_queries_assigns_every_query() -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(3), num_queries=2, sizes=[5])
    query_idx, target_idx = HungarianMatcher()(logits, boxes, targets)[0]
    assert query_idx.tolist() == [0, 1]
    assert len(set(target_idx.tolist())) == 2


def test_non_finite_predictions_are_reported() -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[2])
    logits[0, 1, :] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        HungarianMatcher()(logits, boxes, targets)


def test_invalid_costs_are_rejected() -> None:
    with pytest.raises(ValueError):
        HungarianMatcher(cost_class=0.0, cost_bbox=0.0, cost_giou=0.0)
    with pytest.raises(ValueError):
        HungarianMatcher(cost_class=-1.0)
    with pytest.raises(ValueError):
        HungarianMatcher(focal_alpha=1.5)
