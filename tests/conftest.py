"""Fixtures shared by the whole test suite: small COCO-format datasets on disk and the demo data."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ssl.datasets.demo import DemoPaths, demo_detection_dataset, demo_unlabeled_images

SUITE_PEAK_DISK_GIB = 5
"""About the most the suite holds on disk at once, mostly short runs' checkpoints (4.5 GiB measured)."""


def pytest_report_header() -> str:
    """The free space where the tests write, in the run's header: a run that fails for want of it says so
    up front instead of in a cascade of unrelated-looking errors."""
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free / 2**30
    line = f"free disk under {folder}: {free:.1f} GiB (the suite needs about {SUITE_PEAK_DISK_GIB} GiB)"
    return line if free >= SUITE_PEAK_DISK_GIB else f"WARNING: {line}; tests that write checkpoints will fail"


@dataclass(frozen=True)
class CocoFiles:
    """An annotation file and the folder its images are in."""

    annotation_file: Path
    image_dir: Path


def write_coco(
    root: Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    name: str = "instances.json",
) -> CocoFiles:
    """Write a COCO JSON plus one PNG per image: black, with every non-crowd bbox filled white.

    Boxes are drawn on the pixels they cover (clipped to the image), so tests can check that a box still
    covers its white pixels after a transform.
    """
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for image in images:
        pixels = np.zeros((image["height"], image["width"], 3), dtype=np.uint8)
        for annotation in annotations:
            if annotation.get("image_id") == image["id"] and not annotation.get("iscrowd", 0):
                x, y, w, h = (int(round(v)) for v in annotation["bbox"])
                pixels[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = 255
        Image.fromarray(pixels).save(image_dir / image["file_name"])
    annotation_file = root / name
    document = {"images": images, "annotations": annotations, "categories": categories}
    annotation_file.write_text(json.dumps(document), encoding="utf-8")
    return CocoFiles(annotation_file, image_dir)


def tiny_coco_document() -> dict[str, list[dict[str, Any]]]:
    """Three images (one without boxes), non-contiguous category ids 2, 5, 9, one crowd and one clipped box."""
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 11, "file_name": "b.png", "width": 40, "height": 40},
            {"id": 12, "file_name": "empty.png", "width": 50, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [4, 6, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 2, "image_id": 10, "category_id": 9, "bbox": [30, 20, 24, 20], "iscrowd": 0, "area": 480},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [40, 2, 10, 10], "iscrowd": 1, "area": 100},
            {"id": 4, "image_id": 11, "category_id": 2, "bbox": [30, 25, 20, 10]},  # sticks out right: clipped
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}, {"id": 5, "name": "five"}],
    }


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point DETR_SSL_CACHE at a per-session folder: no test writes into the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("detr_ssl_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DETR_SSL_CACHE", str(cache))
        yield cache


@pytest.fixture
def coco_document() -> dict[str, list[dict[str, Any]]]:
    """A fresh copy of `tiny_coco_document`, to mutate."""
    return tiny_coco_document()


@pytest.fixture
def make_coco(tmp_path: Path) -> Callable[..., CocoFiles]:
    """Factory: ``make_coco(images=..., annotations=..., categories=...)`` writes a dataset in a fresh folder.

    Omitted lists default to those of `tiny_coco_document`.
    """
    counter = iter(range(1_000_000))

    def factory(**lists: list[dict[str, Any]]) -> CocoFiles:
        document = {**tiny_coco_document(), **lists}
        return write_coco(tmp_path / f"coco{next(counter)}", **document)

    return factory


@pytest.fixture
def tiny_coco(make_coco: Callable[..., CocoFiles]) -> CocoFiles:
    """The `tiny_coco_document` dataset on disk."""
    return make_coco()


@pytest.fixture(scope="session")
def demo_data(isolated_cache: Path) -> DemoPaths:
    """The default demo detection set (64 train / 16 val images of 128x128), generated once per session."""
    return demo_detection_dataset()


@pytest.fixture(scope="session")
def demo_photos(isolated_cache: Path) -> Path:
    """The demo folder of real photos, generated once per session."""
    return demo_unlabeled_images()


@pytest.fixture
def demo_subset(demo_data: DemoPaths, tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``demo_subset(n)`` writes the first ``n`` demo training images as their own COCO JSON,
    ``demo_subset(n, "val")`` the first ``n`` validation images (images stay in ``demo_data.image_dir``)."""

    def make(num_images: int, split: Literal["train", "val"] = "train") -> Path:
        document = json.loads((demo_data.train_json if split == "train" else demo_data.val_json).read_text())
        images = document["images"][:num_images]
        kept = {image["id"] for image in images}
        document["images"] = images
        document["annotations"] = [a for a in document["annotations"] if a["image_id"] in kept]
        path = tmp_path / f"demo_{split}_{num_images}.json"
        path.write_text(json.dumps(document))
        return path

    return make


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core test machine two competing threads run slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
