"""Small fine-tuning configurations for end-to-end engine tests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from detr_ssl.config import FinetuneConfig, demo_finetune
from detr_ssl.datasets.demo import DemoPaths


def demo_subset(demo: DemoPaths, folder: Path, num_images: int) -> Path:
    """The first ``num_images`` demo training images as their own COCO JSON."""
    document = json.loads(demo.train_json.read_text())
    images = document["images"][:num_images]
    kept = {image["id"] for image in images}
    document["images"] = images
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in kept]
    path = folder / f"demo_{num_images}.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def small_run(demo_data: DemoPaths, tmp_path: Path):
    """Factory: a demo-preset config training and evaluating on the first N demo images."""

    def make(num_images: int, **run_overrides: object) -> FinetuneConfig:
        subset = demo_subset(demo_data, tmp_path, num_images)
        base = demo_finetune()
        return replace(
            base,
            data=replace(base.data, train_json=subset, val_json=subset, images=demo_data.image_dir),
            run=replace(base.run, output_dir=tmp_path / "run", log_every=1, **run_overrides),
        )

    return make
