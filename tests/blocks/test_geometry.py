"""View geometry: cell centres, PixPro's positive mask (by hand and against the released formula), point
mapping between views and the overlap of two crops."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from detr_ssl.blocks.geometry import (
    cell_centres,
    cell_diagonals,
    image_to_view,
    map_points,
    overlap_boxes,
    pixpro_normalised,
    positive_mask,
    view_to_image,
)


def _boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _flags(*values: bool) -> torch.Tensor:
    return torch.tensor(values)


def test_cell_centres_of_a_flipped_crop_run_from_its_right_edge() -> None:
    boxes = _boxes((10, 20, 40, 32))  # 30 x 12 crop, grid 2 x 3: cells 10 wide and 6 high
    plain = cell_centres(boxes, _flags(False), (2, 3))
    flipped = cell_centres(boxes, _flags(True), (2, 3))
    expected_plain = [(15, 23), (25, 23), (35, 23), (15, 29), (25, 29), (35, 29)]
    expected_flipped = [(35, 23), (25, 23), (15, 23), (35, 29), (25, 29), (15, 29)]
    torch.testing.assert_close(plain, torch.tensor([expected_plain], dtype=torch.float32))
    torch.testing.assert_close(flipped, torch.tensor([expected_flipped], dtype=torch.float32))
    torch.testing.assert_close(cell_diagonals(boxes, (2, 3)), torch.tensor([math.hypot(10, 6)]))


def _hand_mask(a_x: list[float], b_x: list[float], ys: list[float], diagonal: float, threshold: float) -> torch.Tensor:
    """Mask of two 3x3 grids with the given column centres (A, B) and shared row centres, from plain arithmetic."""
    expected = torch.zeros(1, 9, 9, dtype=torch.bool)
    for i in range(9):
        for j in range(9):
            distance = math.hypot(a_x[i % 3] - b_x[j % 3], ys[i // 3] - ys[j // 3])
            expected[0, i, j] = distance / diagonal < threshold
    return expected


def test_positive_mask_by_hand_in_pixels() -> None:
    # A: (0, 0, 60, 60), 3x3 cells of 20 px: centres x = y = 10, 30, 50.
    # B: (30, 0, 90, 60) flipped: centres x = 90 - 10, 90 - 30, 90 - 50 = 80, 60, 40; y = 10, 30, 50.
    # Radius 0.5 * hypot(20, 20) = 14.1: only same-row pairs 10 px apart in x are positive:
    # (A col 1, B col 2), (A col 2, B col 1), (A col 2, B col 2) in each row.
    expected = _hand_mask([10, 30, 50], [80, 60, 40], [10, 30, 50], math.hypot(20, 20), 0.5)
    assert expected.sum() == 9
    mask = positive_mask(_boxes((0, 0, 60, 60)), _flags(False), _boxes((30, 0, 90, 60)), _flags(True),
                         (3, 3), (3, 3), threshold=0.5)
    assert torch.equal(mask, expected)


def test_positive_mask_by_hand_in_released_pixpro_coordinates() -> None:
    # Image 101 x 101, so the release divides by 100. A = columns 0..60 -> x in [0, 0.6]; B = columns 30..90,
    # flipped -> x from 0.9 down to 0.3; rows 0..60 -> y in [0, 0.6]. Cells are 0.2 wide: centres
    # A 0.1, 0.3, 0.5 and B 0.8, 0.6, 0.4; same-row pairs 0.1 apart are 0.354 diagonals apart (< 0.36).
    sizes = torch.tensor([[101, 101]])
    a, b = _boxes((0, 0, 61, 61)), _boxes((30, 0, 91, 61))
    released = positive_mask(a, _flags(False), b, _flags(True), (3, 3), (3, 3), threshold=0.36, image_sizes=sizes)
    expected = _hand_mask([0.1, 0.3, 0.5], [0.8, 0.6, 0.4], [0.1, 0.3, 0.5], math.hypot(0.2, 0.2), 0.36)
    assert expected.sum() == 9
    assert torch.equal(released, expected)
    # In pixels the crops are 61 px wide (cells 61/3): centres A 10.17, 30.5, 50.83 and B 80.83, 60.5, 40.17,
    # so (A col 2, B col 2) is 10.67 px apart, 0.371 diagonals: not positive in pixel coordinates.
    in_pixels = positive_mask(a, _flags(False), b, _flags(True), (3, 3), (3, 3), threshold=0.36)
    a_x = [61 / 6, 61 / 2, 305 / 6]
    expected = _hand_mask(a_x, [91 - x for x in a_x], a_x, math.hypot(61 / 3, 61 / 3), 0.36)
    assert expected.sum() == 6
    assert torch.equal(in_pixels, expected)


def _released_mask(crop_a: tuple[int, ...], crop_b: tuple[int, ...], grid: int, ratio: float) -> torch.Tensor:
    """PixPro's released positive mask written out cell by cell in float32, from crop parameters
    ``(i, j, h, w, height, width, flip)``: normalised corners ``(j, i, j + w - 1, i + h - 1)`` over
    ``(width - 1, height - 1)``, x corners swapped by a flip, centre = (index + 0.5) * bin + start, and
    positive when the centre distance over the larger bin diagonal is below the ratio."""
    f32 = np.float32

    def corners(crop: tuple[int, ...]) -> list[np.float32]:
        i, j, h, w, height, width, flip = crop
        box = [j / (width - 1), i / (height - 1), (j + w - 1) / (width - 1), (i + h - 1) / (height - 1)]
        if flip:
            box[0], box[2] = box[2], box[0]
        return [f32(v) for v in box]

    def centres_and_diagonal(box: list[np.float32]) -> tuple[list[tuple[np.float32, np.float32]], np.float32]:
        bin_w, bin_h = (box[2] - box[0]) / f32(grid), (box[3] - box[1]) / f32(grid)
        centres = [((f32(c) + f32(0.5)) * bin_w + box[0], (f32(r) + f32(0.5)) * bin_h + box[1])
                   for r in range(grid) for c in range(grid)]
        return centres, np.sqrt(bin_w**2 + bin_h**2)

    centres_a, diag_a = centres_and_diagonal(corners(crop_a))
    centres_b, diag_b = centres_and_diagonal(corners(crop_b))
    largest = max(diag_a, diag_b)
    mask = torch.zeros(grid * grid, grid * grid, dtype=torch.bool)
    for p, (xa, ya) in enumerate(centres_a):
        for q, (xb, yb) in enumerate(centres_b):
            mask[p, q] = bool(np.sqrt((xa - xb) ** 2 + (ya - yb) ** 2) / largest < f32(ratio))
    return mask


def _random_crop(rng: random.Random, height: int, width: int) -> tuple[int, ...]:
    h, w = rng.randint(height // 3, height), rng.randint(width // 3, width)
    return rng.randint(0, height - h), rng.randint(0, width - w), h, w, height, width, rng.random() < 0.5


def test_positive_mask_matches_the_released_pixpro_formula() -> None:
    rng = random.Random(0)
    sizes = [(rng.randint(20, 300), rng.randint(20, 300)) for _ in range(12)] + [(224, 224), (37, 37)]
    crops = [(_random_crop(rng, *size), _random_crop(rng, *size)) for size in sizes]

    def batch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = [(c[index][1], c[index][0], c[index][1] + c[index][3], c[index][0] + c[index][2]) for c in crops]
        return _boxes(*boxes), _flags(*(c[index][6] for c in crops))

    (boxes_a, flips_a), (boxes_b, flips_b) = batch(0), batch(1)
    image_sizes = torch.tensor(sizes)
    mask = positive_mask(boxes_a, flips_a, boxes_b, flips_b, (7, 7), (7, 7), 0.7, image_sizes=image_sizes)
    expected = torch.stack([_released_mask(a, b, 7, 0.7) for a, b in crops])
    assert mask.any() and not mask.all()
    assert torch.equal(mask, expected)


def test_pixpro_normalised_spans_first_to_last_pixel_centre() -> None:
    # Image 41 high, 101 wide: x over 100, y over 40; the crop's last column is 50 and its last row 30.
    normalised = pixpro_normalised(_boxes((0, 10, 51, 31)), torch.tensor([[41, 101]]))
    torch.testing.assert_close(normalised, torch.tensor([[0.0, 0.25, 0.5, 0.75]]))


def test_positive_mask_accepts_different_grids() -> None:
    # Same crop, grids 2x2 and 4x4: each coarse cell centre lies 0.25 coarse diagonals from 4 fine centres.
    box = _boxes((0, 0, 8, 8))
    mask = positive_mask(box, _flags(False), box, _flags(False), (2, 2), (4, 4), threshold=0.3)
    assert mask.shape == (1, 4, 16)
    assert mask.sum(dim=2).tolist() == [[4, 4, 4, 4]] and mask.sum(dim=1).tolist() == [[1] * 16]


def test_map_points_under_pure_translation() -> None:
    points = torch.tensor([[[5.0, 7.0], [60.0, 0.0]]])
    mapped = map_points(points, _boxes((0, 0, 60, 60)), _flags(False), (60, 60),
                        _boxes((20, 10, 80, 70)), _flags(False), (60, 60))
    torch.testing.assert_close(mapped, torch.tensor([[[-15.0, -3.0], [40.0, -10.0]]]))


def test_map_points_under_pure_scale() -> None:
    # Both views show the same 40 x 20 crop, at 80 x 40 pixels and at 20 x 10 pixels.
    points = torch.tensor([[[8.0, 4.0], [80.0, 40.0]]])
    mapped = map_points(points, _boxes((0, 0, 40, 20)), _flags(False), (40, 80),
                        _boxes((0, 0, 40, 20)), _flags(False), (10, 20))
    torch.testing.assert_close(mapped, torch.tensor([[[2.0, 1.0], [20.0, 10.0]]]))


def test_map_points_through_a_flip() -> None:
    box = _boxes((10, 0, 50, 40))  # 40 px wide, views at 1 px per image pixel
    points = torch.tensor([[[0.0, 3.0], [10.0, 3.0], [40.0, 3.0]]])
    in_image = view_to_image(points, box, _flags(True), (40, 40))
    torch.testing.assert_close(in_image, torch.tensor([[[50.0, 3.0], [40.0, 3.0], [10.0, 3.0]]]))
    mapped = map_points(points, box, _flags(True), (40, 40), box, _flags(False), (40, 40))
    torch.testing.assert_close(mapped, torch.tensor([[[40.0, 3.0], [30.0, 3.0], [0.0, 3.0]]]))


def test_map_points_round_trip_is_the_identity() -> None:
    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(5, 2, generator=generator) * 100
    boxes_a = torch.cat((corner, corner + 10 + torch.rand(5, 2, generator=generator) * 90), dim=1)
    corner = torch.rand(5, 2, generator=generator) * 100
    boxes_b = torch.cat((corner, corner + 10 + torch.rand(5, 2, generator=generator) * 90), dim=1)
    flips_a, flips_b = _flags(True, False, True, False, True), _flags(True, True, False, False, False)
    points = torch.rand(5, 7, 2, generator=generator) * torch.tensor([48.0, 32.0])
    there = map_points(points, boxes_a, flips_a, (32, 48), boxes_b, flips_b, (24, 24))
    back = map_points(there, boxes_b, flips_b, (24, 24), boxes_a, flips_a, (32, 48))
    assert not torch.allclose(there, points)
    torch.testing.assert_close(back, points)
    torch.testing.assert_close(image_to_view(view_to_image(points, boxes_a, flips_a, (32, 48)), boxes_a, flips_a,
                                             (32, 48)), points)


def test_overlap_boxes_under_translation_and_scale() -> None:
    box_a, box_b, valid = overlap_boxes(_boxes((0, 0, 60, 60), (0, 0, 100, 100)), _flags(False, False), (60, 60),
                                        _boxes((20, 10, 80, 70), (0, 0, 50, 50)), _flags(False, False), (60, 60))
    # Second pair: A shows 100 px at 60 px (x0.6), B 50 px at 60 px (x1.2); they share (0, 0, 50, 50).
    torch.testing.assert_close(box_a, torch.tensor([[20.0, 10.0, 60.0, 60.0], [0.0, 0.0, 30.0, 30.0]]))
    torch.testing.assert_close(box_b, torch.tensor([[0.0, 0.0, 40.0, 50.0], [0.0, 0.0, 60.0, 60.0]]))
    assert valid.tolist() == [True, True]


def test_overlap_boxes_mirror_in_a_flipped_view() -> None:
    # A = (10, 0, 50, 40) flipped, B = (30, 5, 90, 45); they share (30, 5, 50, 40). In flipped A, image x 50
    # is view x 0 and image x 30 is view x 20.
    box_a, box_b, valid = overlap_boxes(_boxes((10, 0, 50, 40)), _flags(True), (40, 40),
                                        _boxes((30, 5, 90, 45)), _flags(False), (40, 60))
    torch.testing.assert_close(box_a, torch.tensor([[0.0, 5.0, 20.0, 40.0]]))
    torch.testing.assert_close(box_b, torch.tensor([[0.0, 0.0, 20.0, 35.0]]))
    assert valid.tolist() == [True]


def test_overlap_boxes_of_disjoint_crops_are_invalid_and_finite() -> None:
    box_a, box_b, valid = overlap_boxes(_boxes((0, 0, 10, 10), (0, 0, 10, 10)), _flags(False, True), (8, 8),
                                        _boxes((20, 0, 30, 10), (0, 10, 10, 20)), _flags(True, False), (8, 8))
    assert valid.tolist() == [False, False]
    assert torch.isfinite(box_a).all() and torch.isfinite(box_b).all()
