"""Few-shot COCO (TFA / DetReg protocol): base/novel split, base-training set and seeded K-shot sets.

* The 20 novel classes are the 20 PASCAL VOC classes (`NOVEL_COCO_IDS`); the other 60 COCO classes are base.
* Stage 1 (`base_training_set`): every image is kept, every novel annotation is removed, and the category
  list is reduced to the base classes (a 60-class detector, as in TFA). Images whose only objects are novel
  stay in the set without boxes (they act as background), as TFA does.
* Stage 2 (`sample_k_shot`): for every category of the document, K instances, sampled per image: the
  candidate images of class ``c`` are visited in an order drawn from ``numpy.random.default_rng(seed)``
  (classes in ascending id order, one generator for the whole call) and an image is accepted only if all its
  class-``c`` annotations still fit under K; sampling for ``c`` stops once K is reached. A class with at most
  K instances gets all of them. Only when no single image fits (every candidate has more than K instances of
  ``c``) is the image with the fewest instances taken, exceeding K: unavoidable, and better than no example.
  The greedy pass can end below K when the remaining images hold too many instances each (e.g. K=10 after a
  9-instance image, only 2-instance images left); that is reported in ``per_class_counts``.
  Crowd annotations (``iscrowd`` 1) are never sampled.

The chosen ids are recorded with `write_selection_json` next to the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detr_ssl.datasets.coco_json import read_json
from detr_ssl.errors import ConfigError, DataError
from detr_ssl.atomic_io import atomic_write_json

__all__ = [
    "NOVEL_COCO_IDS",
    "KShotSelection",
    "split_categories",
    "base_training_set",
    "sample_k_shot",
    "kshot_document",
    "write_selection_json",
    "read_selection_json",
]

#: COCO category ids of the 20 novel classes (the PASCAL VOC classes), as published by TFA / DetReg.
NOVEL_COCO_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72)
_NOVEL = frozenset(NOVEL_COCO_IDS)


@dataclass(frozen=True)
class KShotSelection:
    """A K-shot set: sorted image and annotation ids, and per category id the number of instances chosen."""

    image_ids: list[int]
    annotation_ids: list[int]
    per_class_counts: dict[int, int] = field(default_factory=dict)


def split_categories(category_ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """Split category ids into ``(base_ids, novel_ids)``, each sorted; novel = members of `NOVEL_COCO_IDS`."""
    ids = sorted({int(c) for c in category_ids})
    return [c for c in ids if c not in _NOVEL], [c for c in ids if c in _NOVEL]


def _check_document(document: Mapping[str, Any]) -> None:
    if not isinstance(document, Mapping):
        raise DataError("COCO document: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DataError(f"COCO document: {key!r} must be a list")


def base_training_set(document: Mapping[str, Any]) -> dict[str, Any]:
    """Stage-1 set: all images, base annotations only, base categories only (see the module docstring)."""
    _check_document(document)
    result = dict(document)
    result["images"] = list(document["images"])
    result["annotations"] = [a for a in document["annotations"] if a["category_id"] not in _NOVEL]
    result["categories"] = [c for c in document["categories"] if c["id"] not in _NOVEL]
    return result


def sample_k_shot(document: Mapping[str, Any], k: int, seed: int) -> KShotSelection:
    """Seeded, image-level K-shot sampling of every category in ``document`` (rules in the module docstring)."""
    _check_document(document)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"K (shots per class) must be a positive integer, got {k!r}")
    category_ids = sorted({int(c["id"]) for c in document["categories"]})
    # class -> image -> annotation ids of that class in that image (non-crowd only)
    by_class: dict[int, dict[int, list[int]]] = {c: {} for c in category_ids}
    for annotation in document["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        category = annotation["category_id"]
        if category not in by_class:
            raise DataError(f"COCO document: annotation id {annotation['id']}: unknown category_id {category}")
        by_class[category].setdefault(int(annotation["image_id"]), []).append(int(annotation["id"]))

    rng = np.random.default_rng(seed)
    chosen_annotations: set[int] = set()
    chosen_images: set[int] = set()
    counts: dict[int, int] = {}
    for category in category_ids:
        per_image = by_class[category]
        candidates = sorted(per_image)
        order = [candidates[i] for i in rng.permutation(len(candidates))] if candidates else []
        taken: list[int] = []
        total = 0
        for image_id in order:
            if total >= k:
                break
            size = len(per_image[image_id])
            if total + size <= k:
                taken.append(image_id)
                total += size
        if not taken and order:  # every image holds more than K instances: take the smallest (first on ties)
            smallest = min(order, key=lambda image_id: len(per_image[image_id]))
            taken.append(smallest)
            total = len(per_image[smallest])
        for image_id in taken:
            chosen_images.add(image_id)
            chosen_annotations.update(per_image[image_id])
        counts[category] = total
    return KShotSelection(sorted(chosen_images), sorted(chosen_annotations), counts)


def kshot_document(document: Mapping[str, Any], selection: KShotSelection) -> dict[str, Any]:
    """The K-shot training file: the selected annotations, the images they are on, all categories."""
    _check_document(document)
    annotation_ids = set(selection.annotation_ids)
    image_ids = set(selection.image_ids)
    result = dict(document)
    result["annotations"] = [a for a in document["annotations"] if a["id"] in annotation_ids]
    result["images"] = [image for image in document["images"] if image["id"] in image_ids]
    found = {a["id"] for a in result["annotations"]}
    if found != annotation_ids:
        missing = sorted(annotation_ids - found)
        raise DataError(f"COCO document: selected annotation id(s) {missing[:5]} not in 'annotations'")
    result["categories"] = list(document["categories"])
    return result


def write_selection_json(path: str | Path, selection: KShotSelection, k: int, seed: int) -> None:
    """Record a K-shot selection (atomically) as
    ``{"k", "seed", "image_ids", "annotation_ids", "per_class_counts": {"<category id>": n}}``."""
    atomic_write_json(
        Path(path),
        {
            "k": int(k),
            "seed": int(seed),
            "image_ids": list(selection.image_ids),
            "annotation_ids": list(selection.annotation_ids),
            "per_class_counts": {str(c): n for c, n in sorted(selection.per_class_counts.items())},
        },
        indent=1,
    )


def read_selection_json(path: str | Path) -> tuple[int, int, KShotSelection]:
    """Read a file written by `write_selection_json`: ``(k, seed, selection)``."""
    path = Path(path)
    data = read_json(path)
    try:
        k, seed = int(data["k"]), int(data["seed"])
        selection = KShotSelection(
            [int(i) for i in data["image_ids"]],
            [int(i) for i in data["annotation_ids"]],
            {int(c): int(n) for c, n in data["per_class_counts"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"{path}: not a K-shot selection file ({type(error).__name__}: {error})") from None
    return k, seed, selection
