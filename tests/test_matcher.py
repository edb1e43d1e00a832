"""The Hungarian matcher finds the optimal assignment of a cost written out independently here, on both of
its paths (the stacked NumPy one ``forward`` runs on CPU, the padded PyTorch one it runs elsewhere) and with
both assignment solvers (lapx when installed, scipy)."""

from __future__ import annotations

import math

import pytest
import torch
from assignment_reference import brute_force_best
from scipy.optimize import linear_sum_assignment

import detr_ssl.matcher
from detr_ssl.errors import NonFiniteError
from detr_ssl.matcher import HungarianMatcher

PATHS = ("match_stacked", "match_padded")


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


@pytest.fixture(params=["scipy", "lapx"])
def solver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with each assignment solver: scipy (lapx hidden), and lapx when it is installed."""
    if request.param == "scipy":
        monkeypatch.setattr(detr_ssl.matcher, "_lapjvr", None)
    elif detr_ssl.matcher._lapjvr is None:
        pytest.skip("lapx is not installed")
    return request.param


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", range(3))
def test_both_paths_and_solvers_find_an_optimal_assignment(path: str, seed: int, solver: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.3, focal_gamma=1.5)
    num_queries = 7
    sizes = [0, 3, 7, 10, 1]  # no target, fewer, as many and more targets than queries
    logits, boxes, targets = random_case(generator, num_queries, sizes, num_classes=5)

    matches = getattr(matcher, path)(logits, boxes, targets)

    assert len(matches) == len(sizes)
    for image, ((query_idx, target_idx), target) in enumerate(zip(matches, targets)):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(target_idx) == min(num_queries, len(target["labels"]))
        assert query_idx.tolist() == sorted(set(query_idx.tolist()))
        assert len(set(target_idx.tolist())) == len(target_idx)
        if len(query_idx) == 0:
            continue
        cost = matcher.cost_matrix(logits[image], boxes[image], target["labels"], target["boxes"]).double()
        optimum = cost[linear_sum_assignment(cost.numpy())].sum()
        assert float(cost[query_idx, target_idx].sum()) == pytest.approx(float(optimum), rel=1e-6, abs=1e-6)


def test_forward_on_cpu_runs_the_stacked_path(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(1), num_queries=6, sizes=[2, 4])
    matcher = HungarianMatcher()
    expected = matcher.match_stacked(logits, boxes, targets)

    def padded(*args: object) -> None:
        raise AssertionError("forward ran the padded path on CPU")

    monkeypatch.setattr(matcher, "match_padded", padded)
    for (query_idx, target_idx), (want_query, want_target) in zip(matcher(logits, boxes, targets), expected):
        assert torch.equal(query_idx, want_query) and torch.equal(target_idx, want_target)


@pytest.mark.parametrize("chunk", [None, 20])
def test_stacked_cost_holds_each_images_cost_matrix(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saturated logits, zero-area boxes (the area floor acts), identical and disjoint boxes included; and
    computed two rows at a time (chunks that end inside an image and span two)."""
    if chunk is not None:
        monkeypatch.setattr(detr_ssl.matcher, "_CHUNK_ELEMENTS", chunk)
    generator = torch.Generator().manual_seed(4)
    matcher = HungarianMatcher(cost_class=1.5, cost_bbox=4.0, cost_giou=3.0, focal_alpha=0.4, focal_gamma=2.5)
    logits, boxes, targets = random_case(generator, num_queries=9, sizes=[3, 0, 7], num_classes=3)
    logits[0, :3] = torch.tensor([[60.0, -60.0, 0.0], [200.0, -200.0, 1e-6], [-17.0, 17.0, -1e-6]])
    boxes[0, 3] = torch.tensor([0.5, 0.5, 0.0, 0.2])  # zero width
    boxes[2, 0] = targets[2]["boxes"][1]  # identical to a target
    targets[2]["boxes"][0] = torch.tensor([0.05, 0.05, 0.01, 0.0])  # zero height, far from everything
    targets[0]["labels"][:2] = 0

    stacked = matcher.stacked_cost(logits, boxes, targets)

    expected = torch.cat([matcher.cost_matrix(logits[i], boxes[i], t["labels"], t["boxes"]).T
                          for i, t in enumerate(targets)])
    assert stacked.dtype == "float32" and stacked.shape == (10, 9)
    torch.testing.assert_close(torch.from_numpy(stacked), expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("path", PATHS)
def test_half_precision_predictions_match_as_their_float32_values(path: str) -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(2), num_queries=8, sizes=[3, 5])
    logits, boxes = logits.bfloat16(), boxes.bfloat16()
    matcher = getattr(HungarianMatcher(), path)
    for half, full in zip(matcher(logits, boxes, targets), matcher(logits.float(), boxes.float(), targets)):
        assert torch.equal(half[0], full[0]) and torch.equal(half[1], full[1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("poison", ["nan logit", "inf logit", "inf box"])
def test_non_finite_predictions_raise_on_both_paths(path: str, poison: str) -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[0, 2])
    if poison == "inf box":
        boxes[1, 2, 0] = float("inf")
    else:
        logits[1, 1, :] = float("nan") if poison == "nan logit" else float("inf")
    with pytest.raises(NonFiniteError, match="non-finite"):
        getattr(HungarianMatcher(), path)(logits, boxes, targets)


@pytest.mark.parametrize("path", PATHS)
def test_non_finite_predictions_of_an_image_without_targets_are_not_matched(path: str) -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[0, 2])
    logits[0] = float("nan")
    matches = getattr(HungarianMatcher(), path)(logits, boxes, targets)
    assert [len(query_idx) for query_idx, _ in matches] == [0, 2]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("which", ["predicted", "target"])
def test_boxes_with_a_negative_size_are_rejected(path: str, which: str) -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[2])
    (boxes[0] if which == "predicted" else targets[0]["boxes"])[1, 2] = -0.1
    with pytest.raises(ValueError, match="not valid"):
        getattr(HungarianMatcher(), path)(logits, boxes, targets)


@pytest.mark.parametrize("path", PATHS)
def test_mismatched_batch_is_rejected(path: str) -> None:
    logits, boxes, targets = random_case(torch.Generator().manual_seed(0), num_queries=3, sizes=[2, 1])
    matcher = getattr(HungarianMatcher(), path)
    with pytest.raises(ValueError, match="same batch"):
        matcher(logits, boxes[:, :2], targets)
    with pytest.raises(ValueError, match="same batch"):
        matcher(logits, boxes, targets[:1])


@pytest.mark.parametrize("path", PATHS)
def test_no_queries_match_nothing(path: str) -> None:
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.3]])}]
    matches = getattr(HungarianMatcher(), path)(torch.zeros(1, 0, 3), torch.zeros(1, 0, 4), targets)
    assert [(len(query_idx), len(target_idx)) for query_idx, target_idx in matches] == [(0, 0)]
