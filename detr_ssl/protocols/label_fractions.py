"""Semi-supervised label fractions of a COCO training set (DetReg / STAC / Unbiased-Teacher protocols).

A fold keeps ``round(N * fraction)`` images (at least one) chosen by
``numpy.random.default_rng(seed).choice(image_ids, size, replace=False)`` over the image ids in the order
given, with every annotation of the kept images; the id list is returned sorted. The same seed always gives
the same fold (DetReg uses seed 42).

Files written here:

* **STAC-style fold**: ``{stem}.{seed}@{pct}.json`` next to an id list ``{stem}.{seed}@{pct}.image_ids.json``,
  where ``stem`` is the input file name without ``.json`` (``instances_train2017``) and ``pct`` is the
  percentage written like STAC does: ``1``, ``2``, ``5``, ``10``, or ``0.5`` (no trailing ``.0``).
  The id list is ``{"source": ..., "seed": ..., "percent": ..., "fraction": ..., "num_images_total": ...,
  "image_ids": [...]}``.
* **Unbiased-Teacher-style id lists**: one JSON object ``{pct: {seed: [image_id, ...]}}`` where ``pct`` is
  the percentage as a string formatted like the STAC name (``"0.5"``, ``"1"``, ``"10"``), ``seed`` the seed
  as a decimal string (``"0"``..``"9"``) and each list holds sorted COCO image ids. Note: Unbiased Teacher's
  own ``COCO_supervision.txt`` stores indices into its dataset list; ours stores COCO image ids, which do not
  depend on the loading order. The reader accepts any numeric percentage key (``"1.0"`` too).

Every file is written atomically (a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detr_ssl.atomic_io import atomic_write_json
from detr_ssl.datasets.coco_json import parse_images, read_json
from detr_ssl.errors import ConfigError, DataError

__all__ = [
    "FractionFiles",
    "format_percent",
    "fraction_run_name",
    "select_image_ids",
    "subset_coco",
    "stac_fold_name",
    "write_fraction",
    "read_stac_fold",
    "write_ut_id_lists",
    "read_ut_id_lists",
]

_STAC_NAME = re.compile(r"^(?P<stem>.+)\.(?P<seed>\d+)@(?P<pct>\d+(?:\.\d+)?)\.json$")


@dataclass(frozen=True)
class FractionFiles:
    """What `write_fraction` wrote: the subset annotation file and its id list."""

    json_path: Path
    ids_path: Path


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise ConfigError(f"label fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"label fraction must be in (0, 1] (e.g. 0.01 for 1%), got {fraction!r}")
    return float(fraction)


def format_percent(fraction: float) -> str:
    """The percentage of ``fraction`` written like STAC's file names: 0.01 -> ``"1"``, 0.005 -> ``"0.5"``."""
    pct = round(_check_fraction(fraction) * 100.0, 6)
    text = f"{pct:.6f}".rstrip("0").rstrip(".")
    return text


def fraction_run_name(fraction: float, init: str, seed: int) -> str:
    """The folder of one fine-tune of a label-fraction benchmark, under its output folder: the
    initialisation ``init`` on ``fraction`` of the labels with ``seed`` (``25pct/detreg_seed42``)."""
    return f"{format_percent(fraction)}pct/{init}_seed{seed}"


def select_image_ids(image_ids: Sequence[int], fraction: float, seed: int = 42) -> list[int]:
    """Choose ``round(N * fraction)`` (at least 1) of ``image_ids`` without replacement; sorted.

    Uses ``numpy.random.default_rng(seed).choice`` over ``image_ids`` in the order given, so the same
    (ids, fraction, seed) always gives the same subset. Raises `ConfigError` for a fraction outside (0, 1]
    or an empty id list, `DataError` for duplicate ids.
    """
    fraction = _check_fraction(fraction)
    ids = [int(i) for i in image_ids]
    if not ids:
        raise ConfigError("cannot select a label fraction from an empty list of images")
    if len(set(ids)) != len(ids):
        raise DataError("image id list for the label fraction contains duplicate ids")
    size = min(len(ids), max(1, int(round(len(ids) * fraction))))
    chosen = np.random.default_rng(seed).choice(np.asarray(ids, dtype=np.int64), size=size, replace=False)
    return sorted(int(i) for i in chosen)


def _require_lists(document: Mapping[str, Any]) -> None:
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DataError(f"COCO document: {key!r} must be a list")


def subset_coco(document: Mapping[str, Any], image_ids: Iterable[int]) -> dict[str, Any]:
    """A copy of ``document`` with only the images in ``image_ids`` and their annotations.

    Categories (and any other top-level key such as ``info``/``licenses``) are kept unchanged; image and
    annotation order follow the input. Raises `DataError` if an id is not an image of the document.
    """
    _require_lists(document)
    wanted = {int(i) for i in image_ids}
    present = {image["id"] for image in document["images"]}
    missing = sorted(wanted - present)
    if missing:
        raise DataError(f"COCO document: image id(s) {missing[:5]} not in 'images'")
    result = {key: value for key, value in document.items() if key not in ("images", "annotations")}
    result["images"] = [image for image in document["images"] if image["id"] in wanted]
    result["annotations"] = [a for a in document["annotations"] if a["image_id"] in wanted]
    result["categories"] = list(document["categories"])
    return result


def stac_fold_name(stem: str, seed: int, fraction: float) -> str:
    """``{stem}.{seed}@{pct}.json``, e.g. ``instances_train2017.1@10.json`` for seed 1, fraction 0.1."""
    return f"{stem}.{int(seed)}@{format_percent(fraction)}.json"


def write_fraction(train_json: str | Path, out_dir: str | Path, fraction: float, seed: int = 42) -> FractionFiles:
    """Write the STAC-style fold of ``train_json`` for (fraction, seed) into ``out_dir``.

    The stem of the output name is the input file name without ``.json``. Image ids are selected with
    `select_image_ids` over the ``images`` list in file order. Returns the two paths written.
    """
    train_json = Path(train_json)
    fraction = _check_fraction(fraction)
    document = read_json(train_json)
    images = parse_images(document, train_json)  # validates the top level and the images list
    for key in ("annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DataError(f"{train_json}: {key!r} must be a list")
    if not images:
        raise DataError(f"{train_json}: 'images' is empty; cannot take a label fraction")
    file_order = [image["id"] for image in document["images"]]
    chosen = select_image_ids(file_order, fraction, seed)
    name = train_json.name
    stem = name[: -len(".json")] if name.endswith(".json") else train_json.stem
    out_dir = Path(out_dir)
    json_path = out_dir / stac_fold_name(stem, seed, fraction)
    ids_path = json_path.with_name(json_path.name[: -len(".json")] + ".image_ids.json")
    atomic_write_json(json_path, subset_coco(document, chosen))
    atomic_write_json(
        ids_path,
        {
            "source": name,
            "seed": int(seed),
            "percent": float(format_percent(fraction)),
            "fraction": fraction,
            "num_images_total": len(images),
            "image_ids": chosen,
        },
        indent=1,
    )
    return FractionFiles(json_path, ids_path)


def read_stac_fold(path: str | Path) -> tuple[int, float, list[int]]:
    """Parse a STAC fold: ``(seed, percent, sorted image ids)`` from its name and its ``images`` list.

    The name must look like ``{stem}.{seed}@{pct}.json``; otherwise `DataError`.
    """
    path = Path(path)
    match = _STAC_NAME.match(path.name)
    if match is None:
        raise DataError(f"{path}: not a STAC fold name; expected '<stem>.<seed>@<percent>.json'")
    images = parse_images(read_json(path), path)
    return int(match["seed"]), float(match["pct"]), [entry.id for entry in images]


def _percent_key(pct: float | str) -> str:
    try:
        value = float(pct)
    except (TypeError, ValueError):
        raise ConfigError(f"percentage must be a number, got {pct!r}") from None
    return format_percent(value / 100.0)


def write_ut_id_lists(path: str | Path, lists: Mapping[float | str, Mapping[int | str, Iterable[int]]]) -> None:
    """Write ``{pct: {seed: image_ids}}`` as Unbiased-Teacher-style JSON (layout in the module docstring)."""
    data: dict[str, dict[str, list[int]]] = {}
    for pct, by_seed in lists.items():
        key = _percent_key(pct)
        if key in data:
            raise ConfigError(f"percentage {pct!r} given twice (as {key!r})")
        data[key] = {str(int(seed)): sorted(int(i) for i in ids) for seed, ids in by_seed.items()}
    atomic_write_json(Path(path), data)


def read_ut_id_lists(path: str | Path) -> dict[float, dict[int, list[int]]]:
    """Read an Unbiased-Teacher-style id list file: ``{percent: {seed: [image ids]}}`` with numeric keys."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{percent: {{seed: [image ids]}}}}")
    result: dict[float, dict[int, list[int]]] = {}
    for pct_key, by_seed in data.items():
        try:
            pct = float(pct_key)
        except ValueError:
            raise DataError(f"{path}: key {pct_key!r} is not a percentage") from None
        if not isinstance(by_seed, dict):
            raise DataError(f"{path}: [{pct_key!r}] must be an object {{seed: [image ids]}}")
        seeds: dict[int, list[int]] = {}
        for seed_key, ids in by_seed.items():
            if not (isinstance(seed_key, str) and seed_key.lstrip("-").isdigit()):
                raise DataError(f"{path}: [{pct_key!r}]: seed key {seed_key!r} is not an integer")
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise DataError(f"{path}: [{pct_key!r}][{seed_key!r}] must be a list of integer image ids")
            seeds[int(seed_key)] = list(ids)
        result[pct] = seeds
    return result
