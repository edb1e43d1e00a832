"""SwAV's Sinkhorn-Knopp codes and swapped prediction loss."""

from __future__ import annotations

import math

import pytest
import torch

from detr_ssl.losses.swav import sinkhorn_knopp, swapped_prediction_loss


def _reference_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The textbook alternation in float64 on the (K, B) matrix: prototype rows to 1/K, sample columns to 1/B."""
    q = torch.exp(scores.double() / epsilon).T
    q = q / q.sum()
    num_prototypes, batch = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / num_prototypes
        q = q / q.sum(dim=0, keepdim=True) / batch
    return q.T


@pytest.mark.parametrize("batch, prototypes", [(16, 5), (6, 10)])
def test_sinkhorn_has_the_equal_partition_marginals(batch: int, prototypes: int) -> None:
    scores = torch.nn.functional.normalize(torch.randn(batch, prototypes, generator=torch.Generator().manual_seed(0)), dim=1)
    plan = sinkhorn_knopp(scores, epsilon=0.05, iterations=200)
    assert plan.shape == (batch, prototypes)
    torch.testing.assert_close(plan.sum(dim=1), torch.full((batch,), 1 / batch))
    torch.testing.assert_close(plan.sum(dim=0), torch.full((prototypes,), 1 / prototypes), atol=1e-4, rtol=1e-3)


def test_three_iterations_already_spread_the_batch_and_keep_sample_marginals_exact() -> None:
    # Every sample prefers prototype 0: the plain softmax would put the whole batch there.
    scores = torch.full((32, 4), -0.5)
    scores[:, 0] = 0.5
    scores += 0.05 * torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    plan = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(plan.sum(dim=1), torch.full((32,), 1 / 32))
    assert plan.sum(dim=0).max() < 0.3, plan.sum(dim=0)  # softmax alone would give prototype 0 almost 1.0


def test_sinkhorn_matches_a_float64_reference() -> None:
    scores = torch.nn.functional.normalize(torch.randn(24, 12, generator=torch.Generator().manual_seed(2)), dim=1)
    ours = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), _reference_sinkhorn(scores, 0.05, 3), atol=1e-6, rtol=1e-4)


def test_sinkhorn_survives_scores_that_overflow_a_plain_exp() -> None:
    scores = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])  # exp(10 / 0.05) = inf in float32
    plan = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan * 2, torch.eye(2), atol=1e-6, rtol=0)


def test_swapped_loss_is_lowest_when_views_agree_on_their_codes() -> None:
    codes = torch.eye(4)
    agreeing = [10 * torch.eye(4), 10 * torch.eye(4), 10 * torch.eye(4)]
    swapped = [10 * torch.eye(4), 10 * torch.eye(4)[[1, 0, 3, 2]], 10 * torch.eye(4)]
    uniform = [torch.zeros(4, 4)] * 3
    loss = lambda scores: float(swapped_prediction_loss(scores, {0: codes, 1: codes}, temperature=1.0))  # noqa: E731
    assert loss(agreeing) < loss(uniform) < loss(swapped)
    assert loss(uniform) == pytest.approx(math.log(4))


def test_swapped_loss_skips_the_coded_view_itself() -> None:
    codes = torch.eye(3)
    # View 0 predicts its own codes terribly, but only view 1 is scored against view 0's codes.
    scores = [-10 * torch.eye(3), 10 * torch.eye(3)]
    assert float(swapped_prediction_loss(scores, {0: codes}, temperature=1.0)) < 1e-3


def test_swapped_loss_gradient_reaches_every_view() -> None:
    scores = [torch.randn(5, 7, requires_grad=True) for _ in range(4)]
    codes = {0: torch.softmax(torch.randn(5, 7), 1), 1: torch.softmax(torch.randn(5, 7), 1)}
    swapped_prediction_loss(scores, codes, temperature=0.1).backward()
    assert all(view.grad is not None and view.grad.abs().sum() > 0 for view in scores)
