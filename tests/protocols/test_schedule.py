"""Fine-tuning epochs per label fraction: DetReg's published points and the scaling rule between them."""

from __future__ import annotations

import pytest

from detr_ssl.errors import ConfigError
from detr_ssl.protocols import select_image_ids
from detr_ssl.protocols.schedule import PUBLISHED_EPOCHS, fraction_epochs, labelled_images, lr_drop_epoch

COCO_TRAIN = 118_287


@pytest.mark.parametrize(("fraction", "epochs"), [(0.01, 2000), (0.02, 1000), (0.05, 500), (0.1, 400)])
def test_published_points(fraction: float, epochs: int) -> None:
    assert fraction_epochs(fraction, COCO_TRAIN) == epochs
    assert PUBLISHED_EPOCHS[fraction] == epochs


def test_other_fractions_scale_inversely_with_the_labelled_images() -> None:
    # 3% is closest to 2% (1000 epochs): 2/3 of the epochs for 1.5x the images.
    assert fraction_epochs(0.03, COCO_TRAIN) == round(1000 * 2366 / 3549)
    # 0.5% is closest to 1%: twice the epochs.
    assert fraction_epochs(0.005, COCO_TRAIN) == round(2000 * 1183 / 591)
    # 50% of the 64 demo images is anchored at 10%: 6 labelled images -> 32.
    assert fraction_epochs(0.5, 64) == 75


def test_the_anchor_is_the_closest_point_on_a_log_scale() -> None:
    # 3.4% is nearer 2% on a linear scale but nearer 5% by ratio (1.47x vs 1.7x): anchored at 5%.
    assert fraction_epochs(0.034, COCO_TRAIN) == round(500 * 5914 / 4022)


def test_custom_schedule() -> None:
    schedule = {0.5: 20}
    assert fraction_epochs(0.5, 64, schedule) == 20
    assert fraction_epochs(0.25, 64, schedule) == 40
    assert fraction_epochs(0.1, 64, schedule) == 107  # 20 * 32 / 6


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        fraction_epochs(fraction, 100)


def test_labelled_images_matches_the_fold_sampler() -> None:
    for num_images in (1, 7, 64, 1000):
        for fraction in (0.001, 0.01, 0.1, 0.25, 0.5, 1.0):
            expected = len(select_image_ids(list(range(num_images)), fraction))
            assert labelled_images(num_images, fraction) == expected, (num_images, fraction)


def test_lr_drop_at_the_same_relative_point() -> None:
    assert lr_drop_epoch(2000, 0.8) == 1600
    assert lr_drop_epoch(50, 0.8) == 40
    assert lr_drop_epoch(1, 0.8) == 1
    assert lr_drop_epoch(400, 1.0) == 400
    with pytest.raises(ConfigError, match="lr-drop-at"):
        lr_drop_epoch(10, 0.0)
