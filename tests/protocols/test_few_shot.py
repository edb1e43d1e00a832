"""Few-shot COCO: the published base/novel split, the base-training set and the seeded K-shot sampler."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from detr_ssl.errors import ConfigError
from detr_ssl.protocols.few_shot import (
    NOVEL_COCO_IDS,
    KShotSelection,
    base_training_set,
    kshot_document,
    read_selection_json,
    sample_k_shot,
    split_categories,
    write_selection_json,
)

# The 80 COCO category ids: 1..90 without the 10 ids COCO never used.
COCO_IDS = sorted(set(range(1, 91)) - {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
# The 20 VOC classes as COCO ids, as published by TFA / DetReg (written out independently of the module).
PUBLISHED_NOVEL = {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}


class Builder:
    """Grows a COCO dict image by image: ``add({category_id: instances, ...})``."""

    def __init__(self, category_ids: list[int]) -> None:
        self.document: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [{"id": c, "name": f"class{c}"} for c in category_ids],
        }

    def add(self, counts: dict[int, int], crowd: dict[int, int] | None = None) -> int:
        image_id = 100 + 7 * len(self.document["images"])
        self.document["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 100, "height": 80})
        for is_crowd, table in ((0, counts), (1, crowd or {})):
            for category, n in table.items():
                for _ in range(n):
                    self.document["annotations"].append(
                        {"id": 5000 + len(self.document["annotations"]), "image_id": image_id,
                         "category_id": category, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": is_crowd}
                    )
        return image_id


def sampler_document() -> dict[str, Any]:
    """Class 1: 40 singles + 8 triples; 18 (novel): 25 pairs; 2: 4 instances in all; 3: only 12-instance
    images; 27 (base): singles sharing images with class 1; 31: only crowd boxes."""
    b = Builder([1, 2, 3, 18, 27, 31])
    for i in range(40):
        b.add({1: 1, 27: 1} if i % 2 else {1: 1})
    for _ in range(8):
        b.add({1: 3})
    for _ in range(25):
        b.add({18: 2, 27: 1})
    b.add({2: 1})
    b.add({2: 3}, crowd={2: 1})
    b.add({3: 12})
    b.add({3: 13})
    b.add({}, crowd={31: 2})
    b.add({})
    return b.document


def count_per_class(document: dict[str, Any], selection: KShotSelection) -> Counter[int]:
    chosen = set(selection.annotation_ids)
    return Counter(a["category_id"] for a in document["annotations"] if a["id"] in chosen)


def test_novel_ids_are_the_published_twenty_and_base_the_other_sixty() -> None:
    assert len(COCO_IDS) == 80
    assert set(NOVEL_COCO_IDS) == PUBLISHED_NOVEL and len(NOVEL_COCO_IDS) == 20
    base, novel = split_categories(reversed(COCO_IDS))
    assert novel == sorted(PUBLISHED_NOVEL)
    assert base == sorted(set(COCO_IDS) - PUBLISHED_NOVEL) and len(base) == 60
    assert split_categories([27, 1, 90]) == ([27, 90], [1])


def test_base_training_set_has_no_novel_annotation() -> None:
    document = sampler_document()
    base = base_training_set(document)
    assert base["annotations"], "base annotations must remain"
    assert not any(a["category_id"] in PUBLISHED_NOVEL for a in base["annotations"])
    assert [a for a in document["annotations"] if a["category_id"] not in PUBLISHED_NOVEL] == base["annotations"]
    assert base["images"] == document["images"]  # TFA: images with novel objects are kept
    assert [c["id"] for c in base["categories"]] == [27, 31]
    assert len(document["categories"]) == 6  # input untouched


@pytest.mark.parametrize("k", [1, 5, 10])
def test_k_shot_counts(k: int) -> None:
    document = sampler_document()
    selection = sample_k_shot(document, k, seed=0)
    counts = count_per_class(document, selection)
    assert selection.per_class_counts == {c: counts.get(c, 0) for c in (1, 2, 3, 18, 27, 31)}
    assert counts[1] == k  # enough single-instance images: exactly K, never above
    # pairs only: the largest even count <= K; for K=1 no image fits, so one pair (unavoidably over K)
    assert counts[18] == (2 if k == 1 else k - k % 2)
    assert counts[27] == k
    assert counts[2] == min(k, 4)
    assert counts[3] == 12  # every image has > K instances: the smallest image, unavoidably over K
    assert counts[31] == 0  # crowd boxes are never sampled
    # image-level sampling: an image chosen for a class brings all its instances of that class
    chosen = set(selection.annotation_ids)
    for a in document["annotations"]:
        same = [b for b in document["annotations"]
                if b["image_id"] == a["image_id"] and b["category_id"] == a["category_id"] and not b["iscrowd"]]
        if a["id"] in chosen:
            assert all(b["id"] in chosen for b in same)
    images_of_chosen = {a["image_id"] for a in document["annotations"] if a["id"] in chosen}
    assert selection.image_ids == sorted(images_of_chosen)
    assert selection.annotation_ids == sorted(chosen)


def test_k_shot_rare_class_gets_everything() -> None:
    document = sampler_document()
    selection = sample_k_shot(document, 30, seed=3)
    counts = count_per_class(document, selection)
    assert counts[2] == 4 and counts[1] == 30 and counts[18] == 30 and counts[27] == 30


def test_k_shot_deterministic_per_seed_and_varies_across_seeds() -> None:
    document = sampler_document()
    assert sample_k_shot(document, 5, seed=0) == sample_k_shot(document, 5, seed=0)
    draws = {tuple(sample_k_shot(document, 5, seed=s).annotation_ids) for s in range(10)}
    assert len(draws) == 10


def test_k_shot_rejects_bad_k() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError):
            sample_k_shot(sampler_document(), bad, seed=0)  # type: ignore[arg-type]


def test_kshot_document_and_selection_file(tmp_path: Path) -> None:
    document = sampler_document()
    selection = sample_k_shot(document, 10, seed=0)
    subset = kshot_document(document, selection)
    assert sorted(a["id"] for a in subset["annotations"]) == selection.annotation_ids
    assert sorted(image["id"] for image in subset["images"]) == selection.image_ids
    assert subset["categories"] == document["categories"]
    # an image picked for class 27 alone must not bring its class-18 boxes along
    per_class = Counter(a["category_id"] for a in subset["annotations"])
    assert per_class[18] == 10 and per_class[27] == 10

    path = tmp_path / "run" / "kshot_10_seed0.json"
    write_selection_json(path, selection, k=10, seed=0)
    raw = json.loads(path.read_text())
    assert raw["k"] == 10 and raw["seed"] == 0 and raw["annotation_ids"] == selection.annotation_ids
    assert read_selection_json(path) == (10, 0, selection)
    assert list(path.parent.glob("*.tmp")) == []
