"""Datasets, detection-aware transforms, batching and the embedded demo data (installed as ``detr_ssl.datasets``)."""

from detr_ssl.datasets.coco import CocoDetection
from detr_ssl.datasets.collate import Batch, collate_detection
from detr_ssl.datasets.demo import DemoPaths, demo_detection_dataset, demo_unlabeled_images
from detr_ssl.datasets.image_io import ImageCheckReport, read_rgb_image
from detr_ssl.datasets.transforms import make_eval_transforms, make_train_transforms
from detr_ssl.datasets.unlabeled import ImageFolderDataset

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
