"""LC-loss: corresponding points through crop geometry (translation, flip, scale), the masked per-image
InfoNCE against a loop written from its formula, and the loss being lowest when the key map is the query
map warped by the true geometry."""

from __future__ import annotations

import math

import pytest
import torch

from detr_ssl.blocks.geometry import cell_centres
from detr_ssl.datasets.multicrop import ViewGeometry
from detr_ssl.losses.local_contrast import (
    as_dense_map,
    corresponding_points,
    lc_loss,
    local_info_nce,
    sample_points,
)


def _geometry(box: tuple[float, float, float, float], flipped: bool, batch: int = 1, image: int = 96) -> ViewGeometry:
    return ViewGeometry(torch.tensor([box] * batch, dtype=torch.float32), torch.tensor([flipped] * batch),
                        torch.tensor([[image, image]] * batch))


def _sampled(query: ViewGeometry, key: ViewGeometry, key_map: torch.Tensor, grid=(4, 4), size=(32, 32)):
    points, valid = corresponding_points(query, key, grid, size)
    return sample_points(key_map, points), valid


def test_a_translation_by_one_cell_pairs_each_cell_with_its_neighbour() -> None:
    # Query crop (16, 16, 48, 48) at 32 px, 4x4 cells of 8 px: centres x = y = 20, 28, 36, 44 in the image.
    # Key crop (24, 8, 56, 40): the same centres are key-view x = -4, 4, 12, 20 and y = 12, 20, 28, 36, i.e.
    # key column j - 1 and key row i + 1; key x = -4 and key y = 36 fall outside the 32 px key view.
    torch.manual_seed(0)
    key_map = torch.randn(1, 5, 4, 4)
    sampled, valid = _sampled(_geometry((16, 16, 48, 48), False), _geometry((24, 8, 56, 40), False), key_map)
    expected_valid = torch.zeros(4, 4, dtype=torch.bool)
    expected_valid[:3, 1:] = True
    assert torch.equal(valid.view(4, 4), expected_valid)
    for i in range(3):
        for j in range(1, 4):
            torch.testing.assert_close(sampled[0, i * 4 + j], key_map[0, :, i + 1, j - 1])


def test_a_flip_reverses_the_columns() -> None:
    torch.manual_seed(0)
    key_map = torch.randn(2, 5, 4, 4)
    box = (16, 16, 48, 48)
    sampled, valid = _sampled(_geometry(box, False, batch=2), _geometry(box, True, batch=2), key_map)
    assert valid.all()
    torch.testing.assert_close(sampled, key_map.flip(3).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("key_flipped", [False, True])
def test_a_scaled_key_view_is_sampled_at_the_query_cell_centres(key_flipped: bool) -> None:
    # The key crop is twice as large as the query's, so query centres fall between key centres. A key map
    # whose features are its cells' own image coordinates is linear in position, so bilinear sampling at
    # the right points gives back exactly the query cells' image coordinates.
    query, key = _geometry((16, 16, 48, 48), False), _geometry((0, 0, 64, 64), key_flipped)
    coordinate_map = as_dense_map(cell_centres(key.boxes, key.flipped, (4, 4)))
    sampled, valid = _sampled(query, key, coordinate_map)
    assert valid.all()
    torch.testing.assert_close(sampled, cell_centres(query.boxes, query.flipped, (4, 4)))


def _loop_loss(query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, temperature: float) -> float:
    """The LC-loss formula with explicit sums: per image, anchors and candidates are the valid cells only."""
    terms = []
    for b in range(query.shape[0]):
        cells = [i for i in range(query.shape[1]) if valid[b, i]]
        for i in cells:
            scores = {j: math.exp(float(query[b, i] @ keys[b, j]) / temperature) for j in cells}
            terms.append(-math.log(scores[i] / sum(scores.values())))
    return sum(terms) / len(terms)


def test_local_info_nce_matches_the_formula_over_valid_cells() -> None:
    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(3, 6, 4), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(3, 6, 4), dim=-1)
    valid = torch.rand(3, 6) < 0.6
    valid[0, 0], valid[2] = True, False  # at least one valid cell; one image without any
    loss = local_info_nce(query, keys, valid, temperature=0.2)
    assert loss.item() == pytest.approx(_loop_loss(query, keys, valid, 0.2), rel=1e-5)


def test_cells_outside_the_key_view_get_no_gradient_and_an_empty_overlap_gives_zero() -> None:
    torch.manual_seed(0)
    query_map = torch.randn(1, 5, 4, 4, requires_grad=True)
    query, key = _geometry((16, 16, 48, 48), False), _geometry((24, 8, 56, 40), False)  # 9 of 16 cells valid
    lc_loss(query_map, torch.randn(1, 5, 4, 4), query, key, (32, 32)).backward()
    used = query_map.grad.abs().sum(dim=1)[0] > 0
    _, valid = corresponding_points(query, key, (4, 4), (32, 32))
    assert torch.equal(used, valid.view(4, 4))

    far = _geometry((60, 60, 92, 92), False)
    query_map.grad = None
    empty = lc_loss(query_map, torch.randn(1, 5, 4, 4), query, far, (32, 32))
    empty.backward()
    assert empty.item() == 0 and not query_map.grad.any()


def _warp(source_map: torch.Tensor, source: ViewGeometry, target: ViewGeometry, grid: tuple[int, int]) -> torch.Tensor:
    """The target view's map, each cell sampled from ``source_map`` at the point the target cell shows."""
    points, _ = corresponding_points(target, source, grid, (64, 64))
    return sample_points(source_map, points).transpose(1, 2).reshape(source_map.shape[0], -1, *grid)


def test_the_loss_is_lowest_when_the_key_map_is_the_query_map_warped_by_the_true_geometry() -> None:
    torch.manual_seed(0)
    query_map = torch.randn(2, 16, 8, 8)
    query = _geometry((0, 0, 64, 64), False, batch=2)
    key = _geometry((16, 8, 80, 72), True, batch=2)  # shifted by whole cells and flipped
    aligned = _warp(query_map, query, key, (8, 8))
    wrong_geometry = _warp(query_map, query, _geometry((32, 24, 96, 88), True, batch=2), (8, 8))
    shuffled = aligned.flatten(2)[:, :, torch.randperm(64)].view_as(aligned)
    losses = {name: lc_loss(query_map, key_map, query, key, (64, 64)).item()
              for name, key_map in (("aligned", aligned), ("wrong geometry", wrong_geometry),
                                    ("shuffled", shuffled))}
    assert min(losses, key=losses.get) == "aligned", losses
    assert losses["aligned"] < 0.5 * min(losses["wrong geometry"], losses["shuffled"]), losses


def test_as_dense_map_restores_the_grid_and_refuses_a_non_square_count() -> None:
    dense_map = torch.randn(2, 3, 4, 4)
    assert torch.equal(as_dense_map(dense_map.flatten(2).transpose(1, 2)), dense_map)
    with pytest.raises(ValueError, match="square"):
        as_dense_map(torch.randn(2, 12, 3))
