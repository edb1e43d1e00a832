"""COCO-format detection dataset: any annotation JSON plus a folder of images."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from detr_ssl.datasets.coco_json import ImageEntry, InvalidBoxPolicy, load_detections
from detr_ssl.datasets.image_io import ImageCheckReport, check_image_size, check_images, read_rgb_image
from detr_ssl.box_ops import xyxy_to_cxcywh
from detr_ssl.errors import DataError

__all__ = ["CocoDetection", "Transform", "make_target"]

#: A detection transform: ``(image, target) -> (image, target)``, see `detr_ssl.datasets.transforms`.
Transform = Callable[[Any, dict[str, torch.Tensor]], tuple[Any, dict[str, torch.Tensor]]]


class CocoDetection(Dataset):
    """Images and boxes of a COCO-format annotation file.

    The file is validated completely when the dataset is built (see `detr_ssl.datasets.coco_json`); images
    are read on access. Category ids may be any integers: label ``i`` is ``category_ids[i]``, ids sorted.
    Crowd annotations are left out of the targets (but kept in `coco`, where evaluation ignores them);
    images without any box are kept.

    Args:
        annotation_file: COCO JSON with ``images``, ``annotations`` and ``categories``.
        image_dir: folder that ``file_name`` entries are relative to.
        transforms: applied to ``(PIL image, target)``; None returns the RGB PIL image.
        on_invalid_box: ``"error"`` (default) rejects a file with an empty box or one entirely outside its
            image; ``"drop"`` skips such annotations (for large public files with a few degenerate boxes).

    Items are ``(image, target)``, target as in docs/ARCHITECTURE.md: ``boxes`` float ``(K, 4)`` cxcywh
    normalised by the image size, ``labels`` int64 ``(K,)``, ``image_id`` int64, ``orig_size`` and
    ``size`` int64 ``(H, W)``.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        transforms: Transform | None = None,
        *,
        on_invalid_box: InvalidBoxPolicy = "error",
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        parsed = load_detections(self.annotation_file, on_invalid_box)
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image folder not found (images of {self.annotation_file})")
        self.images: list[ImageEntry] = parsed.images
        self.category_ids: list[int] = parsed.category_ids
        self.category_names: list[str] = parsed.category_names
        self._boxes = parsed.boxes
        self._labels = parsed.labels
        self._coco_dict = parsed.coco_dict

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def image_ids(self) -> list[int]:
        """COCO image id of each index, ascending."""
        return [entry.id for entry in self.images]

    @cached_property
    def coco(self) -> COCO:
        """pycocotools index of the (already validated) annotations, for evaluation. Built on first use."""
        coco = COCO()
        coco.dataset = self._coco_dict
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index].file_name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        entry = self.images[index]
        path = self.image_path(index)
        image = read_rgb_image(path)
        check_image_size(path, image.size, (entry.width, entry.height), self.annotation_file)
        target = make_target(self._boxes[entry.id], self._labels[entry.id], entry.id, image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def validate_images(self, decode: bool = True) -> ImageCheckReport:
        """Check that every image exists, decodes (when ``decode``) and has the size the JSON declares.

        Returns a report instead of raising, so all problems are listed at once
        (``report.raise_if_problems()`` turns it into one `DataError`).
        """
        items = ((self.image_dir / e.file_name, (e.width, e.height)) for e in self.images)
        return check_images(items, source=self.annotation_file, decode=decode)


def make_target(
    boxes_xyxy: np.ndarray, labels: np.ndarray, image_id: int, image: Image.Image
) -> dict[str, torch.Tensor]:
    """Build a target dict from absolute ``(x0, y0, x1, y1)`` pixel boxes of ``image`` (the library contract)."""
    width, height = image.size
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    size = torch.tensor([height, width], dtype=torch.int64)
    return {
        "boxes": xyxy_to_cxcywh(boxes / scale),
        "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "orig_size": size,
        "size": size.clone(),
    }
