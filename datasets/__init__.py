"""Datasets, detection-aware transforms, batching and the embedded demo data (installed as ``detr_ssl.datasets``).

The names below are imported on first use (PEP 562), so that importing a light submodule (``coco_json``,
``sizes``, ``demo``) does not import torch: the command-line entry points read those before parsing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detr_ssl.datasets.coco import CocoDetection
    from detr_ssl.datasets.collate import Batch, collate_detection
    from detr_ssl.datasets.demo import DemoPaths, demo_detection_dataset, demo_unlabeled_images
    from detr_ssl.datasets.image_io import ImageCheckReport, read_rgb_image
    from detr_ssl.datasets.transforms import make_eval_transforms, make_train_transforms
    from detr_ssl.datasets.unlabeled import ImageFolderDataset

_SUBMODULE = {
    "Batch": "collate",
    "CocoDetection": "coco",
    "DemoPaths": "demo",
    "ImageCheckReport": "image_io",
    "ImageFolderDataset": "unlabeled",
    "collate_detection": "collate",
    "demo_detection_dataset": "demo",
    "demo_unlabeled_images": "demo",
    "make_eval_transforms": "transforms",
    "make_train_transforms": "transforms",
    "read_rgb_image": "image_io",
}

__all__ = [
    "Batch",
    "CocoDetection",
    "DemoPaths",
    "ImageCheckReport",
    "ImageFolderDataset",
    "collate_detection",
    "demo_detection_dataset",
    "demo_unlabeled_images",
    "make_eval_transforms",
    "make_train_transforms",
    "read_rgb_image",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULE:
        return getattr(import_module(f"{__name__}.{_SUBMODULE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
