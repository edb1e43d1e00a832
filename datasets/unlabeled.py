"""Images without labels, for pretraining: a folder (searched recursively) or the images of a COCO JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detr_ssl.datasets.coco import Transform, make_target
from detr_ssl.datasets.coco_json import parse_images, read_json
from detr_ssl.datasets.image_io import IMAGE_EXTENSIONS, ImageCheckReport, check_images, read_rgb_image
from detr_ssl.errors import DataError

__all__ = ["ImageFolderDataset"]

_NO_BOXES = np.zeros((0, 4), dtype=np.float32)
_NO_LABELS = np.zeros((0,), dtype=np.int64)


class ImageFolderDataset(Dataset):
    """Every image of a folder, or every image listed in a COCO JSON (its annotations are ignored).

    Items are ``(image, target)`` with an empty-box target (``boxes`` ``(0, 4)``, ``labels`` ``(0,)``), so the
    detection transforms and `collate_detection` apply unchanged and a pretext task fills in its own boxes.

    Args:
        source: an image folder (files with `IMAGE_EXTENSIONS`, any depth, hidden entries skipped, sorted by
            relative path) or a COCO-format JSON file.
        transforms: applied to ``(PIL image, target)``.
        image_dir: for a JSON source, the folder its ``file_name`` entries are relative to
            (default: the JSON's folder).

    ``image_ids`` are the COCO ids for a JSON source and the sorted position for a folder.
    """

    def __init__(
        self, source: str | Path, transforms: Transform | None = None, *, image_dir: str | Path | None = None
    ) -> None:
        source = Path(source)
        self.source = source
        self.transforms = transforms
        self._declared_sizes: list[tuple[int, int] | None]
        if source.is_dir():
            if image_dir is not None:
                raise ValueError("image_dir applies to a COCO JSON source only")
            self.image_paths = _scan_folder(source)
            self.image_ids = list(range(len(self.image_paths)))
            self._declared_sizes = [None] * len(self.image_paths)
        elif source.is_file():
            folder = Path(image_dir) if image_dir is not None else source.parent
            entries = parse_images(read_json(source), source)
            if not entries:
                raise DataError(f"{source}: 'images' is empty")
            self.image_paths = [folder / entry.file_name for entry in entries]
            self.image_ids = [entry.id for entry in entries]
            self._declared_sizes = [(entry.width, entry.height) for entry in entries]
            if not self.image_paths[0].is_file():
                raise DataError(
                    f"{source}: image {self.image_paths[0]} not found; pass the folder the images are in (image_dir)"
                )
        else:
            raise DataError(f"{source}: no such image folder or annotation file")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        image = read_rgb_image(self.image_paths[index])
        target = make_target(_NO_BOXES, _NO_LABELS, self.image_ids[index], image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def validate_images(self, decode: bool = True) -> ImageCheckReport:
        """Check every image is readable (and, for a JSON source, of the declared size); see `check_images`."""
        source = self.source if self.source.is_file() else None
        return check_images(zip(self.image_paths, self._declared_sizes), source=source, decode=decode)


def _scan_folder(folder: Path) -> list[Path]:
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not paths:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"{folder}: no images found (looked for {extensions} files in it and its subfolders)")
    return paths
