"""Parse and validate a COCO-format annotation file, once, up front.

Every problem raises `DataError` with a one-line message that starts with the file's path and names the
offending entry (``images[3]``, ``annotation id 17``...), so a user can fix the file without reading a
traceback. The result is a plain structure the dataset indexes into; nothing here reads images.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from detr_ssl.errors import DataError

__all__ = ["ImageEntry", "CocoDetections", "InvalidBoxPolicy", "read_json", "parse_images", "load_detections"]

#: What to do with an annotation whose box is empty (width or height <= 0) or lies entirely outside its image.
InvalidBoxPolicy = Literal["error", "drop"]

_REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class ImageEntry:
    """One entry of the ``images`` list."""

    id: int
    file_name: str
    width: int
    height: int


@dataclass
class CocoDetections:
    """A validated detection annotation file.

    Attributes:
        images: every image, sorted by id (images without boxes included).
        category_ids: COCO category id of contiguous label ``i``, sorted ascending.
        category_names: name of label ``i``.
        boxes: image id -> ``(K, 4)`` float32 absolute ``(x0, y0, x1, y1)`` pixels, clipped to the image;
            crowd annotations excluded.
        labels: image id -> ``(K,)`` int64 contiguous labels, aligned with ``boxes``.
        coco_dict: the annotation dict for pycocotools: invalid boxes removed (under the "drop" policy),
            crowd annotations kept (evaluation ignores detections on them), ``area`` and ``iscrowd``
            filled in where the file omits them (COCOeval reads both).
    """

    images: list[ImageEntry]
    category_ids: list[int]
    category_names: list[str]
    boxes: dict[int, np.ndarray]
    labels: dict[int, np.ndarray]
    coco_dict: dict[str, Any]


def read_json(path: str | Path) -> Any:
    """Load a JSON file; a missing file or a syntax error becomes a `DataError` with line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a JSON file, found a folder") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read annotation file ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None


def parse_images(data: Any, path: str | Path) -> list[ImageEntry]:
    """Validate the top-level object and its ``images`` list; return the entries sorted by id."""
    path = Path(path)
    _require_object(data, path)
    images = _require_list(data, "images", path)
    entries: dict[int, ImageEntry] = {}
    for position, item in enumerate(images):
        where = f"images[{position}]"
        if not isinstance(item, Mapping):
            raise DataError(f"{path}: {where} must be an object, found {_json_type(item)}")
        image_id = _require_int(item, "id", where, path)
        if image_id in entries:
            raise DataError(f"{path}: {where}: duplicate image id {image_id}")
        file_name = item.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{path}: {where} (id {image_id}): 'file_name' must be a non-empty string")
        width = _require_int(item, "width", where, path)
        height = _require_int(item, "height", where, path)
        if width <= 0 or height <= 0:
            raise DataError(f"{path}: {where} (id {image_id}): width and height must be > 0, got {width}x{height}")
        entries[image_id] = ImageEntry(image_id, file_name, width, height)
    return [entries[image_id] for image_id in sorted(entries)]


def load_detections(path: str | Path, on_invalid_box: InvalidBoxPolicy = "error") -> CocoDetections:
    """Read and validate a COCO detection file (``images``, ``annotations``, ``categories``)."""
    path = Path(path)
    if on_invalid_box not in ("error", "drop"):
        raise ValueError(f"on_invalid_box must be 'error' or 'drop', got {on_invalid_box!r}")
    data = read_json(path)
    _require_object(data, path)
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise DataError(f"{path}: missing top-level key(s) {', '.join(repr(k) for k in missing)}")
    images = parse_images(data, path)
    category_ids, category_names = _parse_categories(_require_list(data, "categories", path), path)
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}
    image_of = {entry.id: entry for entry in images}

    boxes: dict[int, list[tuple[float, float, float, float]]] = {entry.id: [] for entry in images}
    labels: dict[int, list[int]] = {entry.id: [] for entry in images}
    kept_annotations: list[dict[str, Any]] = []
    invalid: list[str] = []
    seen_ids: set[int] = set()
    for position, item in enumerate(_require_list(data, "annotations", path)):
        where = f"annotations[{position}]"
        if not isinstance(item, Mapping):
            raise DataError(f"{path}: {where} must be an object, found {_json_type(item)}")
        annotation_id = _require_int(item, "id", where, path)
        if annotation_id in seen_ids:
            raise DataError(f"{path}: {where}: duplicate annotation id {annotation_id}")
        seen_ids.add(annotation_id)
        where = f"annotation id {annotation_id}"
        image_id = _require_int(item, "image_id", where, path)
        if image_id not in image_of:
            raise DataError(f"{path}: {where}: unknown image_id {image_id}")
        category_id = _require_int(item, "category_id", where, path)
        if category_id not in label_of:
            raise DataError(f"{path}: {where}: unknown category_id {category_id}")
        crowd = item.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, bool):
            raise DataError(f"{path}: {where}: 'iscrowd' must be 0 or 1, got {crowd!r}")
        x, y, w, h = _require_bbox(item, where, path)
        entry = image_of[image_id]
        problem = _box_problem(x, y, w, h, entry)
        if problem is not None:
            invalid.append(f"{where}: {problem}")
            continue
        kept_annotations.append(_with_eval_fields(item, w * h, crowd))
        if not crowd:
            boxes[image_id].append(
                (max(x, 0.0), max(y, 0.0), min(x + w, float(entry.width)), min(y + h, float(entry.height)))
            )
            labels[image_id].append(label_of[category_id])

    if invalid and on_invalid_box == "error":
        more = f" ({len(invalid)} annotations have invalid boxes)" if len(invalid) > 1 else ""
        raise DataError(f"{path}: {invalid[0]}{more}; fix the file or pass --on-invalid-box drop (on_invalid_box='drop') to skip them")
    if invalid:
        warnings.warn(
            f"{path}: skipped {len(invalid)} annotation(s) with invalid boxes, first: {invalid[0]}", stacklevel=3
        )

    coco_dict = {
        "images": list(data["images"]),
        "annotations": kept_annotations,
        "categories": list(data["categories"]),
    }
    return CocoDetections(
        images=images,
        category_ids=category_ids,
        category_names=category_names,
        boxes={key: np.asarray(value, dtype=np.float32).reshape(-1, 4) for key, value in boxes.items()},
        labels={key: np.asarray(value, dtype=np.int64) for key, value in labels.items()},
        coco_dict=coco_dict,
    )


def _parse_categories(categories: list[Any], path: Path) -> tuple[list[int], list[str]]:
    names: dict[int, str] = {}
    for position, item in enumerate(categories):
        where = f"categories[{position}]"
        if not isinstance(item, Mapping):
            raise DataError(f"{path}: {where} must be an object, found {_json_type(item)}")
        category_id = _require_int(item, "id", where, path)
        if category_id in names:
            raise DataError(f"{path}: {where}: duplicate category id {category_id}")
        name = item.get("name")
        if not isinstance(name, str):
            raise DataError(f"{path}: {where} (id {category_id}): 'name' must be a string")
        names[category_id] = name
    if not names:
        raise DataError(f"{path}: 'categories' is empty; a detection file needs at least one category")
    ids = sorted(names)
    return ids, [names[category_id] for category_id in ids]


def _box_problem(x: float, y: float, w: float, h: float, image: ImageEntry) -> str | None:
    if w <= 0 or h <= 0:
        return f"bbox has zero or negative size (width {w:g}, height {h:g})"
    if x >= image.width or y >= image.height or x + w <= 0 or y + h <= 0:
        return (
            f"bbox [{x:g}, {y:g}, {w:g}, {h:g}] lies entirely outside image id {image.id} "
            f"({image.width}x{image.height})"
        )
    return None


def _with_eval_fields(annotation: Mapping[str, Any], area: float, crowd: int) -> dict[str, Any]:
    if "area" in annotation and "iscrowd" in annotation:
        return dict(annotation)
    return {"area": area, **annotation, "iscrowd": crowd}


def _require_object(data: Any, path: Path) -> None:
    if not isinstance(data, Mapping):
        raise DataError(f"{path}: expected a JSON object at the top level, found {_json_type(data)}")


def _require_list(data: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    if key not in data:
        raise DataError(f"{path}: missing top-level key {key!r}")
    value = data[key]
    if not isinstance(value, list):
        raise DataError(f"{path}: {key!r} must be a list, found {_json_type(value)}")
    return value


def _require_int(item: Mapping[str, Any], key: str, where: str, path: Path) -> int:
    if key not in item:
        raise DataError(f"{path}: {where}: missing {key!r}")
    value = item[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"{path}: {where}: {key!r} must be an integer, found {_json_type(value)} {value!r}")
    return value


def _require_bbox(item: Mapping[str, Any], where: str, path: Path) -> tuple[float, float, float, float]:
    if "bbox" not in item:
        raise DataError(f"{path}: {where}: missing 'bbox'")
    bbox = item["bbox"]
    valid = (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )
    if not valid:
        raise DataError(f"{path}: {where}: 'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    return x, y, w, h


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    for python_type, name in names.items():
        if isinstance(value, python_type):
            return name
    return "a number"
