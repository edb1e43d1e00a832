"""Box <-> (top-left corner, center) keypoint pairs: round trips, a hand-computed case, the clamp."""

from __future__ import annotations

import pytest
import torch

from detr_ssl.pairs import boxes_to_pairs, pairs_to_boxes


def random_boxes(generator: torch.Generator, *shape: int) -> torch.Tensor:
    center = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(*shape, 2, generator=generator) * 0.35 + 0.01
    return torch.cat((center, size), dim=-1)


def test_hand_computed_box() -> None:
    box = torch.tensor([0.5, 0.4, 0.2, 0.6])  # x from 0.4 to 0.6, y from 0.1 to 0.7
    corner, center = boxes_to_pairs(box)
    torch.testing.assert_close(corner, torch.tensor([0.4, 0.1]))
    torch.testing.assert_close(center, torch.tensor([0.5, 0.4]))
    torch.testing.assert_close(pairs_to_boxes(torch.tensor([0.1, 0.3]), torch.tensor([0.25, 0.35])),
                               torch.tensor([0.25, 0.35, 0.3, 0.1]))


@pytest.mark.parametrize("shape", [(7,), (2, 5), (3, 1, 4)])
def test_round_trips(shape: tuple[int, ...]) -> None:
    boxes = random_boxes(torch.Generator().manual_seed(len(shape)), *shape)
    corner, center = boxes_to_pairs(boxes)
    assert corner.shape == center.shape == (*shape, 2)
    torch.testing.assert_close(pairs_to_boxes(corner, center), boxes)

    back_corner, back_center = boxes_to_pairs(pairs_to_boxes(corner, center))
    torch.testing.assert_close(back_corner, corner)
    torch.testing.assert_close(back_center, center)


def test_corner_past_the_center_gives_an_empty_box_not_a_negative_one() -> None:
    center = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    corner = torch.tensor([[0.6, 0.3], [0.7, 0.8]])  # right of the center; right of and below it
    boxes = pairs_to_boxes(corner, center)
    torch.testing.assert_close(boxes, torch.tensor([[0.5, 0.5, 0.0, 0.4], [0.5, 0.5, 0.0, 0.0]]))


def test_gradient_flows_to_both_keypoints() -> None:
    corner = torch.tensor([0.2, 0.3], requires_grad=True)
    center = torch.tensor([0.4, 0.4], requires_grad=True)
    pairs_to_boxes(corner, center).sum().backward()
    torch.testing.assert_close(corner.grad, torch.tensor([-2.0, -2.0]))  # d(w + h) / d(x0, y0)
    torch.testing.assert_close(center.grad, torch.tensor([3.0, 3.0]))  # 1 from (cx, cy) + 2 from (w, h)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError):
        boxes_to_pairs(torch.zeros(3, 2))
    with pytest.raises(ValueError):
        pairs_to_boxes(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        pairs_to_boxes(torch.zeros(3, 4), torch.zeros(3, 4))
