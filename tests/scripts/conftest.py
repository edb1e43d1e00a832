from __future__ import annotations

import pytest

from detr_ssl.datasets.demo import DemoPaths


@pytest.fixture
def small_coco_subset(demo_data: DemoPaths, demo_subset) -> list[str]:
    """Data flags for the first 8 demo images (train = val)."""
    subset = demo_subset(8)
    return ["--train-json", str(subset), "--val-json", str(subset), "--images", str(demo_data.image_dir)]
