"""The embedded demo data: a generated shape-detection set and a folder of real photos, no download.

Both are written once to a cache folder and reused: ``$DETR_SSL_CACHE/demo-v1`` (default
``~/.cache/detr_ssl/demo-v1``), or ``root`` when given. Each set is built in a temporary folder next to its
final place and renamed into place, so processes racing to create it (``accelerate launch`` with several
processes) never see a half-written set: one rename wins, the others discard their copy.

The detection set is deterministic for its arguments: image ``i`` of a split depends only on
``(seed, split, i, image_size)``.
"""

from __future__ import annotations

import colorsys
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detr_ssl.datasets.image_io import read_rgb_image
from detr_ssl.errors import DataError

__all__ = [
    "DEMO_CATEGORIES",
    "DemoPaths",
    "demo_cache_dir",
    "demo_detection_dataset",
    "demo_unlabeled_images",
]

#: ``(COCO category id, name)``; the ids are deliberately not contiguous.
DEMO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "circle"), (3, "square"), (7, "triangle"), (8, "cross"), (12, "ring"),
)  # fmt: skip

#: Object side as a fraction of the image side, per scale band, with the probability of each band.
#: At 128 px these are COCO's small (< 32 px), medium and large (>= 96 px) objects.
_SCALE_BANDS = ((0.0625, 0.17), (0.25, 0.47), (0.75, 0.92))
_SCALE_PROBS = (0.45, 0.4, 0.15)
_MAX_OVERLAP = 0.1  # of the smaller box's area; objects stay visible
_MIN_CONTRAST = 70  # luminance difference between an object and the background under it
_SPLIT_CODES = {"train": 0, "val": 1}

#: Photos bundled inside scikit-image's wheel (no pooch download), in the order they are used.
_PHOTO_FILES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
    "camera.png", "motorcycle_left.png", "hubble_deep_field.jpg", "coins.png",
)  # fmt: skip
_PHOTO_LONG_SIDE = 256
#: Crop windows (left, top, right, bottom) as fractions, cut from each photo besides the full view.
_PHOTO_CROPS = ((0.0, 0.0, 0.6, 0.6), (0.4, 0.4, 1.0, 1.0), (0.2, 0.15, 0.8, 0.85))


@dataclass(frozen=True)
class DemoPaths:
    """Where a generated demo detection set lives."""

    train_json: Path
    val_json: Path
    image_dir: Path


def demo_cache_dir() -> Path:
    """``$DETR_SSL_CACHE/demo-v1``, or ``~/.cache/detr_ssl/demo-v1`` when the variable is unset."""
    base = os.environ.get("DETR_SSL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "detr_ssl") / "demo-v1"


def demo_detection_dataset(
    root: str | Path | None = None,
    num_train: int = 64,
    num_val: int = 16,
    image_size: int = 128,
    seed: int = 0,
) -> DemoPaths:
    """Generate (first call) or reuse the synthetic shape-detection set; return its COCO files.

    Five classes of shape (`DEMO_CATEGORIES`) in random colours, 1-5 per image at small, medium and large
    scales, on textured noisy backgrounds; square PNG images of side ``image_size``.
    """
    if num_train < 1 or num_val < 1 or image_size < 32:
        raise ValueError("need num_train >= 1, num_val >= 1 and image_size >= 32")
    base = Path(root) if root is not None else demo_cache_dir()
    folder = base / f"detection-{num_train}-{num_val}-{image_size}px-seed{seed}"
    _build_once(folder, lambda tmp: _write_detection_set(tmp, num_train, num_val, image_size, seed))
    return DemoPaths(folder / "train.json", folder / "val.json", folder / "images")


def demo_unlabeled_images(root: str | Path | None = None) -> Path:
    """Return a folder of real RGB photos (from scikit-image's bundled data, plus fixed crops of them)."""
    base = Path(root) if root is not None else demo_cache_dir()
    folder = base / "photos"
    _build_once(folder, _write_photos)
    return folder


def _build_once(folder: Path, build: Callable[[Path], None]) -> None:
    """Create ``folder`` with ``build`` unless it exists; atomic against concurrent builders."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        build(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_detection_set(folder: Path, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    image_dir = folder / "images"
    image_dir.mkdir()
    first_id = {"train": 1, "val": num_train + 1}
    for split, count in (("train", num_train), ("val", num_val)):
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index, image_size])
            pixels, objects = _render_image(rng, image_size)
            image_id = first_id[split] + index
            file_name = f"{split}_{index:04d}.png"
            Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for category_id, (x, y, w, h) in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                })  # fmt: skip
        categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in DEMO_CATEGORIES]
        document = {"images": images, "annotations": annotations, "categories": categories}
        (folder / f"{split}.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def _render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, tuple[int, ...]]]]:
    """Draw one image; return its uint8 pixels and ``(category id, (x, y, w, h))`` per object."""
    background = _textured_background(rng, size)
    canvas = Image.fromarray(background)
    draw = ImageDraw.Draw(canvas)
    sides = sorted((_object_side(rng, size) for _ in range(rng.integers(1, 6))), key=lambda s: -s[0] * s[1])
    objects: list[tuple[int, tuple[int, ...]]] = []
    for w, h in sides:
        box = _place(rng, size, w, h, [b for _, b in objects])
        if box is None:
            continue
        category_id, name = DEMO_CATEGORIES[rng.integers(len(DEMO_CATEGORIES))]
        x, y = box[0], box[1]
        under = background[y : y + h, x : x + w].reshape(-1, 3).mean(axis=0)
        _draw_shape(draw, name, x, y, w, h, _contrasting_colour(rng, under))
        objects.append((category_id, box))
    pixels = np.asarray(canvas, dtype=np.int16) + rng.normal(0.0, 6.0, (size, size, 3)).astype(np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8), objects


def _textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted base colour, smooth colour blotches (upsampled coarse noise) and fine grain."""
    base = rng.uniform(60, 190, 3)
    coarse = rng.normal(0.0, 30.0, (rng.integers(3, 9), rng.integers(3, 9), 3))
    blotches = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c].astype(np.float32)).resize((size, size), Image.BICUBIC))
         for c in range(3)],
        axis=-1,
    )  # fmt: skip
    grain = rng.normal(0.0, 10.0, (size, size, 3))
    return np.clip(base + blotches + grain, 0, 255).astype(np.uint8)


def _object_side(rng: np.random.Generator, size: int) -> tuple[int, int]:
    low, high = _SCALE_BANDS[rng.choice(len(_SCALE_BANDS), p=_SCALE_PROBS)]
    side = rng.uniform(low, high) * size
    aspect = np.sqrt(rng.uniform(0.7, 1.4))
    w = int(np.clip(round(side * aspect), 6, size - 2))
    h = int(np.clip(round(side / aspect), 6, size - 2))
    return w, h


def _place(
    rng: np.random.Generator, size: int, w: int, h: int, taken: list[tuple[int, ...]], tries: int = 30
) -> tuple[int, int, int, int] | None:
    for _ in range(tries):
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if all(_overlap(x, y, w, h, other) <= _MAX_OVERLAP for other in taken):
            return x, y, w, h
    return None


def _overlap(x: int, y: int, w: int, h: int, other: tuple[int, ...]) -> float:
    ox, oy, ow, oh = other
    inter_w = max(0, min(x + w, ox + ow) - max(x, ox))
    inter_h = max(0, min(y + h, oy + oh) - max(y, oy))
    return inter_w * inter_h / min(w * h, ow * oh)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random saturated colour whose luminance differs clearly from ``under`` (so colour never names the class)."""
    background_luma = _luma(under)
    colour = (0, 0, 0)
    for _ in range(20):
        r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.4, 1.0), rng.uniform(0.15, 1.0))
        colour = (round(r * 255), round(g * 255), round(b * 255))
        if abs(_luma(np.asarray(colour)) - background_luma) >= _MIN_CONTRAST:
            return colour
    return (255, 255, 255) if background_luma < 128 else (0, 0, 0)


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, x: int, y: int, w: int, h: int, colour: tuple[int, ...]) -> None:
    """Fill exactly the pixels ``[x, x + w) x [y, y + h)`` touch at their extremes (the box is tight)."""
    x1, y1 = x + w - 1, y + h - 1
    if name == "circle":
        draw.ellipse([x, y, x1, y1], fill=colour)
    elif name == "square":
        draw.rectangle([x, y, x1, y1], fill=colour)
    elif name == "triangle":
        draw.polygon([(x, y1), (x1, y1), ((x + x1) / 2, y)], fill=colour)
    elif name == "cross":
        bar_w, bar_h = max(2, w // 3), max(2, h // 3)
        left, top = x + (w - bar_w) // 2, y + (h - bar_h) // 2
        draw.rectangle([left, y, left + bar_w - 1, y1], fill=colour)
        draw.rectangle([x, top, x1, top + bar_h - 1], fill=colour)
    elif name == "ring":
        draw.ellipse([x, y, x1, y1], outline=colour, width=max(2, min(w, h) // 5))
    else:
        raise ValueError(f"unknown demo shape {name!r}")


def _write_photos(folder: Path) -> None:
    source_dir = _skimage_data_dir()
    sources = [source_dir / name for name in _PHOTO_FILES if (source_dir / name).is_file()]
    if not sources:
        raise DataError(f"{source_dir}: none of scikit-image's bundled photos ({', '.join(_PHOTO_FILES)}) found")
    for source in sources:
        photo = read_rgb_image(source)
        scale = _PHOTO_LONG_SIDE / max(photo.size)
        if scale < 1:
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS)
        photo.save(folder / f"{source.stem}.jpg", quality=90)
        for number, (left, top, right, bottom) in enumerate(_PHOTO_CROPS):
            window = (round(left * photo.width), round(top * photo.height),
                      round(right * photo.width), round(bottom * photo.height))  # fmt: skip
            photo.crop(window).save(folder / f"{source.stem}_crop{number}.png")


def _skimage_data_dir() -> Path:
    """scikit-image's data folder, located without importing it (importing may configure pooch)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed: the demo photos come from its bundled data")
    return Path(next(iter(spec.submodule_search_locations))) / "data"
