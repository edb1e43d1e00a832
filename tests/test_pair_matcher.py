"""The pair matcher finds the optimal assignment of a cost written out scalar by scalar here."""

from __future__ import annotations

import math

import pytest
import torch
from assignment_reference import brute_force_best

from detr_ssl.matcher import HungarianMatcher
from detr_ssl.pair_matcher import PairHungarianMatcher

Targets = list[dict[str, torch.Tensor]]


def reference_cost(corner: list[float], center: list[float], label_logit: float, target: list[float],
                   matcher: PairHungarianMatcher) -> float:
    """One (pair, target) cost from the formulas: focal class cost, keypoint L1, GIoU of the spanned box."""
    alpha, gamma = matcher.focal.alpha, matcher.focal.gamma
    p = 1 / (1 + math.exp(-label_logit))
    class_cost = alpha * (1 - p) ** gamma * -math.log(p) - (1 - alpha) * p**gamma * -math.log(1 - p)

    cx, cy, w, h = target
    point_cost = (abs(corner[0] - (cx - w / 2)) + abs(corner[1] - (cy - h / 2))
                  + abs(center[0] - cx) + abs(center[1] - cy))

    # The predicted box spans from the corner to its mirror image through the center (empty if inverted).
    half_w, half_h = max(center[0] - corner[0], 0.0), max(center[1] - corner[1], 0.0)
    a = [center[0] - half_w, center[1] - half_h, center[0] + half_w, center[1] + half_h]
    b = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    giou = inter / union - (hull - union) / hull
    return matcher.cost_class * class_cost + matcher.cost_point * point_cost - matcher.cost_giou * giou


def random_case(generator: torch.Generator, num_queries: int, sizes: list[int], num_classes: int = 3
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Targets]:
    batch = len(sizes)
    logits = torch.randn(batch, num_queries, num_classes, generator=generator) * 2
    centers = torch.rand(batch, num_queries, 2, generator=generator) * 0.6 + 0.2
    # Mostly up-left of the center, sometimes past it (an empty predicted box must be handled too).
    corners = centers - torch.rand(batch, num_queries, 2, generator=generator) * 0.25 + 0.03

    def boxes(n: int) -> torch.Tensor:
        return torch.cat((torch.rand(n, 2, generator=generator) * 0.6 + 0.2,
                          torch.rand(n, 2, generator=generator) * 0.3 + 0.05), dim=-1)

    targets = [{"labels": torch.randint(num_classes, (k,), generator=generator), "boxes": boxes(k)} for k in sizes]
    return logits, corners, centers, targets


def image_cost(logits: torch.Tensor, corners: torch.Tensor, centers: torch.Tensor, target: dict[str, torch.Tensor],
               matcher: PairHungarianMatcher) -> list[list[float]]:
    return [[reference_cost(corners[q].tolist(), centers[q].tolist(), float(logits[q, int(label)]), box, matcher)
             for label, box in zip(target["labels"], target["boxes"].tolist())]
            for q in range(len(logits))]


@pytest.mark.parametrize("sizes", [[3, 1], [5], [2, 0, 4], [1, 6], [4, 4], [0, 3, 7]])
def test_matches_brute_force_optimum(sizes: list[int]) -> None:
    generator = torch.Generator().manual_seed(sum(sizes) * 10 + len(sizes))
    matcher = PairHungarianMatcher(cost_class=1.5, cost_point=4.0, cost_giou=3.0, focal_alpha=0.3, focal_gamma=1.5)
    num_queries = 5
    logits, corners, centers, targets = random_case(generator, num_queries, sizes)

    matches = matcher(logits, corners, centers, targets)

    assert len(matches) == len(targets)
    for image, ((query_idx, target_idx), target) in enumerate(zip(matches, targets)):
        num_targets = len(target["labels"])
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert query_idx.device.type == "cpu"
        assert len(query_idx) == len(target_idx) == min(num_queries, num_targets)
        assert torch.equal(query_idx, query_idx.sort().values)
        assert len(set(query_idx.tolist())) == len(query_idx)
        assert len(set(target_idx.tolist())) == len(target_idx)
        if num_targets == 0:
            continue
        cost = image_cost(logits[image], corners[image], centers[image], target, matcher)
        total = sum(cost[q][k] for q, k in zip(query_idx.tolist(), target_idx.tolist()))
        assert total == pytest.approx(brute_force_best(cost), rel=1e-5, abs=1e-5)


def test_cost_matrix_equals_scalar_reference() -> None:
    matcher = PairHungarianMatcher()
    logits, corners, centers, targets = random_case(torch.Generator().manual_seed(7), num_queries=6, sizes=[4])
    assert bool((corners > centers).any())  # some predicted boxes are empty
    cost = matcher.cost_matrix(logits[0], corners[0], centers[0], targets[0]["labels"], targets[0]["boxes"])
    expected = torch.tensor(image_cost(logits[0], corners[0], centers[0], targets[0], matcher))
    torch.testing.assert_close(cost, expected, rtol=1e-5, atol=1e-5)


def test_pair_follows_both_keypoints() -> None:
    """Query 1's center sits on target 0's center, but only query 2 has both of its keypoints."""
    centers = torch.tensor([[[0.2, 0.2], [0.7, 0.7], [0.7, 0.7]]])
    corners = torch.tensor([[[0.1, 0.1], [0.3, 0.3], [0.6, 0.6]]])
    logits = torch.zeros(1, 3, 1)
    targets = [{"labels": torch.tensor([0, 0]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]])}]
    query_idx, target_idx = PairHungarianMatcher()(logits, corners, centers, targets)[0]
    assert query_idx.tolist() == [0, 2]
    assert target_idx.tolist() == [1, 0]


def test_without_point_cost_it_agrees_with_the_box_matcher_on_the_spanned_boxes() -> None:
    """Class + GIoU costs only: the pair matcher must pick what HungarianMatcher picks for the same boxes."""
    generator = torch.Generator().manual_seed(3)
    logits, _, _, targets = random_case(generator, num_queries=6, sizes=[4, 2])
    boxes = torch.cat((torch.rand(2, 6, 2, generator=generator) * 0.6 + 0.2,
                       torch.rand(2, 6, 2, generator=generator) * 0.3 + 0.05), dim=-1)
    centers, corners = boxes[..., :2], boxes[..., :2] - boxes[..., 2:] / 2
    by_pairs = PairHungarianMatcher(cost_class=2.0, cost_point=0.0, cost_giou=2.0)(logits, corners, centers, targets)
    by_boxes = HungarianMatcher(cost_class=2.0, cost_bbox=0.0, cost_giou=2.0)(logits, boxes, targets)
    for (pair_q, pair_t), (box_q, box_t) in zip(by_pairs, by_boxes):
        assert torch.equal(pair_q, box_q) and torch.equal(pair_t, box_t)


def test_all_images_empty() -> None:
    logits, corners, centers, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[0, 0])
    matches = PairHungarianMatcher()(logits, corners, centers, targets)
    assert len(matches) == 2
    for query_idx, target_idx in matches:
        assert query_idx.shape == target_idx.shape == (0,)
        assert query_idx.dtype == target_idx.dtype == torch.int64


def test_more_targets_than_queries_assigns_every_query() -> None:
    logits, corners, centers, targets = random_case(torch.Generator().manual_seed(3), num_queries=2, sizes=[5])
    query_idx, target_idx = PairHungarianMatcher()(logits, corners, centers, targets)[0]
    assert query_idx.tolist() == [0, 1]
    assert len(set(target_idx.tolist())) == 2


@pytest.mark.parametrize("field", ["logits", "corners", "centers"])
def test_non_finite_predictions_are_reported(field: str) -> None:
    logits, corners, centers, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[2])
    {"logits": logits, "corners": corners, "centers": centers}[field][0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        PairHungarianMatcher()(logits, corners, centers, targets)


def test_invalid_arguments_are_rejected() -> None:
    logits, corners, centers, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[2])
    with pytest.raises(ValueError, match="same batch"):
        PairHungarianMatcher()(logits, corners[:, :2], centers, targets)
    with pytest.raises(ValueError):
        PairHungarianMatcher(cost_class=0.0, cost_point=0.0, cost_giou=0.0)
    with pytest.raises(ValueError):
        PairHungarianMatcher(cost_point=-1.0)
    with pytest.raises(ValueError):
        PairHungarianMatcher(focal_gamma=-1.0)
