"""Label-fraction folds: seeded selection, subsets, STAC names and Unbiased-Teacher id lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detr_ssl.errors import ConfigError, DataError
from detr_ssl.protocols.label_fractions import (
    format_percent,
    fraction_run_name,
    read_stac_fold,
    read_ut_id_lists,
    select_image_ids,
    stac_fold_name,
    subset_coco,
    write_fraction,
    write_ut_id_lists,
)


def synthetic_coco(num_images: int = 200) -> dict[str, Any]:
    """Images with non-contiguous ids, 0-2 annotations each, COCO-like category ids."""
    images = [{"id": 1000 + 3 * i, "file_name": f"{i:06d}.jpg", "width": 64, "height": 48} for i in range(num_images)]
    annotations = []
    for i, image in enumerate(images):
        for j in range(i % 3):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image["id"], "category_id": (1, 18, 90)[j],
                 "bbox": [1, 2, 10, 8], "area": 80, "iscrowd": 0}
            )
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 18, 90)]
    return {"info": {"v": 1}, "images": images, "annotations": annotations, "categories": categories}


def test_selection_same_seed_same_subset_and_size() -> None:
    ids = [image["id"] for image in synthetic_coco(1000)["images"]]
    for fraction in (0.01, 0.02, 0.05, 0.1, 0.5, 1.0):
        first = select_image_ids(ids, fraction, seed=42)
        assert first == select_image_ids(ids, fraction, seed=42)
        assert len(first) == round(len(ids) * fraction)
        assert first == sorted(first) and len(set(first)) == len(first) and set(first) <= set(ids)


def test_selection_matches_default_rng_choice() -> None:
    ids = list(range(5, 505))
    expected = sorted(np.random.default_rng(42).choice(ids, size=5, replace=False).tolist())
    assert select_image_ids(ids, 0.01) == expected


def test_selection_differs_across_seeds() -> None:
    ids = list(range(1000))
    subsets = {tuple(select_image_ids(ids, 0.05, seed)) for seed in range(5)}
    assert len(subsets) == 5


def test_selection_at_least_one_image_and_bad_fraction() -> None:
    assert len(select_image_ids([7, 8, 9], 0.01, 0)) == 1
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError):
            select_image_ids([1, 2, 3], bad)


def test_subset_keeps_images_annotations_and_categories() -> None:
    document = synthetic_coco(30)
    keep = [1003, 1006, 1009]
    subset = subset_coco(document, keep)
    assert [image["id"] for image in subset["images"]] == keep
    assert subset["annotations"] == [a for a in document["annotations"] if a["image_id"] in keep]
    assert len(subset["annotations"]) == 3
    assert subset["categories"] == document["categories"] and subset["info"] == document["info"]
    with pytest.raises(DataError):
        subset_coco(document, [1])


@pytest.mark.parametrize(
    ("fraction", "text"), [(0.01, "1"), (0.02, "2"), (0.05, "5"), (0.1, "10"), (0.005, "0.5"), (0.07, "7"), (1.0, "100")]
)
def test_percent_format_like_stac(fraction: float, text: str) -> None:
    assert format_percent(fraction) == text
    assert stac_fold_name("instances_train2017", 3, fraction) == f"instances_train2017.3@{text}.json"
    assert fraction_run_name(fraction, "detreg", 3) == f"{text}pct/detreg_seed3"


def test_write_fraction_and_read_back(tmp_path: Path) -> None:
    document = synthetic_coco(200)
    train = tmp_path / "instances_train2017.json"
    train.write_text(json.dumps(document))
    files = write_fraction(train, tmp_path / "folds", 0.05, seed=1)
    assert files.json_path.name == "instances_train2017.1@5.json"
    seed, pct, ids = read_stac_fold(files.json_path)
    assert (seed, pct) == (1, 5.0)
    assert ids == select_image_ids([image["id"] for image in document["images"]], 0.05, 1)
    assert len(ids) == 10
    id_list = json.loads(files.ids_path.read_text())
    assert id_list["image_ids"] == ids and id_list["seed"] == 1 and id_list["num_images_total"] == 200
    written = json.loads(files.json_path.read_text())
    assert written == subset_coco(document, ids)
    assert list(files.json_path.parent.glob("*.tmp")) == []
    # same seed rewrites the same file; another seed gives another subset
    assert json.loads(write_fraction(train, tmp_path / "again", 0.05, seed=1).json_path.read_text()) == written
    other = write_fraction(train, tmp_path / "folds", 0.005, seed=2)
    assert other.json_path.name == "instances_train2017.2@0.5.json"
    assert read_stac_fold(other.json_path)[:2] == (2, 0.5)


def test_read_stac_fold_rejects_other_names(tmp_path: Path) -> None:
    path = tmp_path / "instances_train2017.json"
    path.write_text(json.dumps(synthetic_coco(3)))
    with pytest.raises(DataError, match="STAC"):
        read_stac_fold(path)


def test_ut_id_lists_round_trip(tmp_path: Path) -> None:
    lists = {1.0: {0: [5, 3, 9], 1: [2]}, 0.5: {0: [7]}, 10: {4: []}}
    path = tmp_path / "COCO_supervision.json"
    write_ut_id_lists(path, lists)
    raw = json.loads(path.read_text())
    assert raw == {"1": {"0": [3, 5, 9], "1": [2]}, "0.5": {"0": [7]}, "10": {"4": []}}
    assert read_ut_id_lists(path) == {1.0: {0: [3, 5, 9], 1: [2]}, 0.5: {0: [7]}, 10.0: {4: []}}


def test_ut_id_lists_reader_accepts_float_keys_and_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "ut.json"
    path.write_text(json.dumps({"1.0": {"0": [1, 2]}}))
    assert read_ut_id_lists(path) == {1.0: {0: [1, 2]}}
    path.write_text(json.dumps({"1.0": {"0": ["a"]}}))
    with pytest.raises(DataError, match="ut.json"):
        read_ut_id_lists(path)
