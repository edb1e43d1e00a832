"""Selective-search proposals: boxes in the original image's pixels, at most top_k, deterministic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from detr_ssl.datasets import read_rgb_image
from detr_ssl.errors import ConfigError
from detr_ssl.proposals import ProposalSettings, selective_search, selective_search_boxes


def _photo(demo_photos: Path, name: str = "astronaut.jpg") -> np.ndarray:
    return np.asarray(read_rgb_image(demo_photos / name))


def test_boxes_lie_in_the_image_and_are_at_most_top_k(demo_photos: Path) -> None:
    for name, top_k in (("astronaut.jpg", 30), ("coins_crop0.png", 5), ("rocket_crop2.png", 300)):
        image = _photo(demo_photos, name)
        height, width = image.shape[:2]
        boxes = selective_search_boxes(image, ProposalSettings(top_k=top_k))
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert 0 < len(boxes) <= top_k
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
    assert len(boxes) < 300  # the last photo has fewer regions than that: the cut is real, not a pad


def test_boxes_are_scaled_back_to_a_non_square_image(demo_photos: Path) -> None:
    square = _photo(demo_photos)
    wide = np.ascontiguousarray(square[::2])  # 128 x 256
    boxes = selective_search_boxes(wide)
    assert wide.shape[:2] == (128, 256)
    assert boxes[:, 2].max() > 128, "x must span the full width of 256"
    assert boxes[:, 3].max() <= 128


def test_result_is_deterministic_and_a_prefix_of_a_larger_top_k(demo_photos: Path) -> None:
    image = _photo(demo_photos)
    first = selective_search_boxes(image)
    np.testing.assert_array_equal(first, selective_search_boxes(image))
    np.testing.assert_array_equal(first, selective_search_boxes(image, ProposalSettings(top_k=100))[:30])


def test_search_runs_as_released_on_the_rgb_array_resized_bilinearly(demo_photos: Path) -> None:
    """DetReg's loader hands OpenCV the RGB array as loaded, resized with cv2's default (bilinear)
    interpolation; boxes are scaled back and cut to the first top_k, sub-pixel ones included."""
    image = _photo(demo_photos, "coins_crop0.png")
    height, width = image.shape[:2]
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.resize(image, (128, 128), interpolation=cv2.INTER_LINEAR))
    search.switchToSelectiveSearchFast()
    selective_search._c_srand(0)
    rects = search.process().astype(np.float64)
    expected = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) * np.array(
        [width, height, width, height]) / 128
    np.testing.assert_allclose(selective_search_boxes(image), expected[:30], rtol=1e-6)


def test_tiny_images_keep_their_sub_pixel_boxes() -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    boxes = selective_search_boxes(noise, ProposalSettings(top_k=1000))
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides > 0).all() and (sides < 1).any()


def test_fingerprint_is_stable_and_names_every_setting() -> None:
    default = ProposalSettings()
    assert default.fingerprint() == "ss2-fast-128px-top30-seed0"  # changing it orphans every existing cache
    variants = [replace(default, resize=64), replace(default, top_k=10), replace(default, mode="quality"),
                replace(default, seed=1)]
    assert len({default.fingerprint(), *(v.fingerprint() for v in variants)}) == 5


@pytest.mark.parametrize("bad", [{"resize": 4}, {"top_k": 0}, {"mode": "slow"}, {"seed": -1}])
def test_invalid_settings_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ProposalSettings(**bad)


def test_rejects_non_rgb_input() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        selective_search_boxes(np.zeros((16, 16), dtype=np.uint8))
