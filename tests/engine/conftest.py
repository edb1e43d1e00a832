"""Small fine-tuning configurations for end-to-end engine tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from detr_ssl.config import FinetuneConfig, demo_finetune
from detr_ssl.datasets.demo import DemoPaths


@pytest.fixture
def small_run(demo_data: DemoPaths, demo_subset, tmp_path: Path):
    """Factory: a demo-preset config training and evaluating on the first N demo images."""

    def make(num_images: int, **run_overrides: object) -> FinetuneConfig:
        subset = demo_subset(num_images)
        base = demo_finetune()
        return replace(
            base,
            data=replace(base.data, train_json=subset, val_json=subset, images=demo_data.image_dir),
            run=replace(base.run, output_dir=tmp_path / "run", log_every=1, **run_overrides),
        )

    return make
