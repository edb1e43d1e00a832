"""Pair InfoNCE: against a loop reference, its bounds, wrong pairings, gradients, edge cases, gathering."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from detr_ssl.losses.pair_contrastive import pair_infonce
from launch import FORKED_GLOO, run_in_two_processes


def reference_infonce(corner: torch.Tensor, center: torch.Tensor, temperature: float, symmetric: bool) -> float:
    """Row by row: -log softmax of each row's own pair, over cosine similarities / temperature."""
    def direction(queries: torch.Tensor, keys: torch.Tensor) -> float:
        total = 0.0
        for i, query in enumerate(queries.tolist()):
            sims = [sum(a * b for a, b in zip(query, key)) / (math.dist(query, [0.0] * len(query))
                                                              * math.dist(key, [0.0] * len(key)))
                    for key in keys.tolist()]
            total += -sims[i] / temperature + math.log(sum(math.exp(s / temperature) for s in sims))
        return total / len(queries)

    forward = direction(corner, center)
    return (forward + direction(center, corner)) / 2 if symmetric else forward


@pytest.mark.parametrize(("temperature", "symmetric"), [(0.1, True), (0.5, False), (0.07, True)])
def test_matches_reference(temperature: float, symmetric: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    corner, center = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    loss = pair_infonce(corner, center, temperature=temperature, symmetric=symmetric)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert float(loss) == pytest.approx(reference_infonce(corner, center, temperature, symmetric), rel=1e-5)


def test_directions_differ_and_symmetric_is_their_mean() -> None:
    generator = torch.Generator().manual_seed(1)
    corner, center = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    forward = pair_infonce(corner, center, symmetric=False)
    backward = pair_infonce(center, corner, symmetric=False)
    assert abs(float(forward - backward)) > 1e-3
    torch.testing.assert_close(pair_infonce(corner, center), (forward + backward) / 2)


def test_coinciding_separated_pairs_reach_the_bound_and_wrong_pairings_cost_more() -> None:
    num, temperature = 4, 0.1
    embed = torch.eye(num, 8) * torch.tensor([1.0, 3.0, 0.5, 2.0])[:, None]  # orthogonal, scale is irrelevant
    loss = pair_infonce(embed, 5 * embed, temperature=temperature)
    assert float(loss) == pytest.approx(math.log(1 + (num - 1) * math.exp(-1 / temperature)), abs=1e-5)
    assert float(loss) < 1e-3

    wrong = pair_infonce(embed, embed[[1, 0, 3, 2]], temperature=temperature)
    assert float(wrong) > 9.0  # each corner's true center is orthogonal, a wrong one parallel

    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # two pairs pointing away from each other: the infimum
    assert float(pair_infonce(opposite, opposite)) == pytest.approx(math.log(1 + math.exp(-2 / temperature)),
                                                                   abs=1e-6)


def test_gradient_reaches_both_embeddings() -> None:
    generator = torch.Generator().manual_seed(2)
    corner = torch.randn(5, 6, generator=generator, requires_grad=True)
    center = torch.randn(5, 6, generator=generator, requires_grad=True)
    pair_infonce(corner, center).backward()
    for embed in (corner, center):
        assert embed.grad is not None and torch.isfinite(embed.grad).all() and embed.grad.abs().sum() > 0


def test_a_gradient_step_on_a_wrong_pairing_lowers_the_loss() -> None:
    generator = torch.Generator().manual_seed(3)
    corner = torch.randn(4, 6, generator=generator, requires_grad=True)
    center = torch.randn(4, 6, generator=generator)
    before = pair_infonce(corner, center)
    before.backward()
    with torch.no_grad():
        after = pair_infonce(corner - 0.5 * corner.grad, center)
    assert after < before


def test_no_pairs_gives_a_zero_loss_attached_to_the_graph() -> None:
    corner = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    center = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    loss = pair_infonce(corner, center)
    assert loss.shape == () and loss.item() == 0.0 and loss.device == corner.device
    assert loss.grad_fn is not None
    loss.backward()
    assert corner.grad is not None and corner.grad.shape == (0, 4)


def test_a_single_pair_has_no_negative_and_costs_zero() -> None:
    corner = torch.randn(1, 3, requires_grad=True)
    loss = pair_infonce(corner, torch.randn(1, 3))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.isfinite(corner.grad).all()


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="temperature"):
        pair_infonce(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0)
    with pytest.raises(ValueError):
        pair_infonce(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError):
        pair_infonce(torch.randn(2, 3, 1), torch.randn(2, 3, 1))


def test_gathering_without_a_process_group_changes_nothing() -> None:
    generator = torch.Generator().manual_seed(4)
    corner, center = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    gathered = pair_infonce(corner, center, gather_across_processes=True)
    torch.testing.assert_close(gathered, pair_infonce(corner, center))


def local_reference(corners: list[torch.Tensor], centers: list[torch.Tensor], rank: int, temperature: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of process ``rank`` using every process's pairs, the other processes' rows as constants;
    returns (loss, grad of its corner rows, grad of its center rows)."""
    local_corner = corners[rank].clone().requires_grad_()
    local_center = centers[rank].clone().requires_grad_()
    norm = torch.nn.functional.normalize
    all_corner = torch.cat([norm(local_corner if r == rank else c, dim=-1) for r, c in enumerate(corners)])
    all_center = torch.cat([norm(local_center if r == rank else c, dim=-1) for r, c in enumerate(centers)])
    offset = sum(len(c) for c in corners[:rank])
    rows = slice(offset, offset + len(local_corner))
    targets = torch.arange(offset, offset + len(local_corner))
    ce = torch.nn.functional.cross_entropy
    loss = (ce(all_corner[rows] @ all_center.T / temperature, targets)
            + ce(all_center[rows] @ all_corner.T / temperature, targets)) / 2
    loss.backward()
    return loss.detach(), local_corner.grad, local_center.grad


def _gather_worker(rank: int, out: str, corners: list[torch.Tensor], centers: list[torch.Tensor]) -> None:
    corner = corners[rank].clone().requires_grad_()
    center = centers[rank].clone().requires_grad_()
    loss = pair_infonce(corner, center, temperature=0.2, gather_across_processes=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "corner": corner.grad, "center": center.grad}, f"{out}/{rank}.pt")


@FORKED_GLOO
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sizes", [(3, 2), (2, 0)])
def test_gathering_across_two_processes_uses_every_pair_as_negatives(tmp_path: Path, sizes: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(sum(sizes))
    corners = [torch.randn(n, 4, generator=generator) for n in sizes]
    centers = [torch.randn(n, 4, generator=generator) for n in sizes]
    run_in_two_processes(_gather_worker, tmp_path, str(tmp_path), corners, centers)

    for rank, size in enumerate(sizes):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        if size == 0:
            assert float(result["loss"]) == 0.0
            continue
        loss, corner_grad, center_grad = local_reference(corners, centers, rank, temperature=0.2)
        assert float(result["loss"]) > float(pair_infonce(corners[rank], centers[rank], temperature=0.2)) - 1e-6
        torch.testing.assert_close(result["loss"], loss)
        torch.testing.assert_close(result["corner"], corner_grad)
        torch.testing.assert_close(result["center"], center_grad)
