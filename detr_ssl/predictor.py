"""Run a trained detector on images: ``Detector.from_checkpoint(path).predict(images)``.

Images go through the evaluation pipeline the checkpoint was scored with (its resize, ImageNet
normalisation, zero padding to the batch's largest image) and detections through the same
:func:`~detr_ssl.evaluation.postprocess`, so predicting a run's val images in its evaluation batches
reproduces its ``metrics.json``. Deformable DETR's output depends slightly on a batch's padding (the valid
ratio of each feature level), so the default batch size is the one the run evaluated with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from detr_ssl.datasets import collate_detection, make_eval_transforms
from detr_ssl.datasets.coco import make_target
from detr_ssl.datasets.image_io import read_rgb_image
from detr_ssl.datasets.sizes import PAPER_EVAL_SIZE, PAPER_MAX_SIZE
from detr_ssl.detector import LoadedDetector, load_detector
from detr_ssl.evaluation import postprocess
from detr_ssl.models.outputs import DetectionOutput

__all__ = ["Detections", "Detector", "ImageInput", "AGNOSTIC_NAME", "prepare_image"]

ImageInput = str | Path | Image.Image
"""An image file or an already decoded PIL image."""

AGNOSTIC_NAME = "object"
"""The one class of a class-agnostic detector (a pretext's, or any with ``class_agnostic=True``)."""

_NO_BOXES = np.zeros((0, 4), dtype=np.float32)
_NO_LABELS = np.zeros((0,), dtype=np.int64)


@dataclass(frozen=True)
class Detections:
    """One image's detections by decreasing score; boxes are absolute ``(x0, y0, x1, y1)`` pixels of the
    original image."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    """Class index of each detection (0 for a class-agnostic detector)."""
    names: list[str]
    category_ids: list[int]
    """COCO category id of each detection (1 for a class-agnostic detector)."""

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> Detections:
        """The detections scoring at least ``threshold``."""
        keep = (self.scores >= threshold).nonzero().flatten().tolist()
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep],
                          [self.names[i] for i in keep], [self.category_ids[i] for i in keep])

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries (``bbox`` as x, y, width, height), as pycocotools' ``loadRes`` reads them."""
        xywh = torch.cat((self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]), dim=1)
        return [{"image_id": image_id, "category_id": category, "bbox": box, "score": score, "category_name": name}
                for box, score, category, name in zip(xywh.tolist(), self.scores.tolist(), self.category_ids,
                                                      self.names)]


def prepare_image(image: ImageInput, transforms: Callable) -> tuple[Tensor, dict[str, Tensor]]:
    """``(tensor, target)`` of an image file or PIL image after ``transforms``, as a dataset item."""
    picture = read_rgb_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
    return transforms(picture, make_target(_NO_BOXES, _NO_LABELS, 0, picture))


class Detector:
    """A trained detector with its input pipeline and class names.

    Build it with :meth:`from_checkpoint`; :meth:`predict` takes image files or PIL images.
    """

    def __init__(self, loaded: LoadedDetector, eval_size: int, max_size: int, batch_size: int = 1,
                 class_agnostic: bool = False) -> None:
        self.loaded = loaded
        self.transforms = make_eval_transforms(eval_size, max_size)
        self.eval_size, self.max_size = eval_size, max_size
        self.batch_size = batch_size
        self.class_agnostic = class_agnostic or loaded.num_classes == 1
        if self.class_agnostic:
            self.class_names, self.category_ids = [AGNOSTIC_NAME], [1]
        else:
            self.category_ids = loaded.category_ids or list(range(1, loaded.num_classes + 1))
            self.class_names = loaded.category_names or [f"class_{c}" for c in self.category_ids]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", *,
                        eval_size: int | None = None, max_size: int | None = None, batch_size: int | None = None,
                        class_agnostic: bool = False, checkpoint: Any = None) -> Detector:
        """The detector in ``path`` (a fine-tuning ``checkpoint.pth`` or a detector pretext's
        ``pretrained.pth``; ``checkpoint`` is its content when the caller has read it already). Input size
        and batch size default to those the checkpoint records."""
        loaded = load_detector(Path(path), device, checkpoint)
        recorded_size = loaded.input_size or (PAPER_EVAL_SIZE, PAPER_MAX_SIZE)
        return cls(loaded, eval_size or recorded_size[0], max_size or recorded_size[1],
                   batch_size or loaded.eval_batch_size or 1, class_agnostic)

    @property
    def device(self) -> torch.device:
        return next(self.loaded.model.parameters()).device

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageInput], top_k: int = 100) -> list[Detections]:
        """Detections for ``images`` run as one padded batch."""
        batch = collate_detection([prepare_image(image, self.transforms) for image in images]).to(self.device)
        output = self.loaded.detect(self.loaded.model, batch)
        if self.class_agnostic and output.logits.shape[-1] > 1:
            output = DetectionOutput(logits=output.logits.max(dim=-1, keepdim=True).values, boxes=output.boxes)
        orig_sizes = torch.stack([target["orig_size"] for target in batch.targets])
        return [self._named(found) for found in postprocess(output, orig_sizes, top_k=top_k)]

    def _named(self, found: dict[str, Tensor]) -> Detections:
        labels = found["labels"].cpu()
        return Detections(found["boxes"].cpu(), found["scores"].cpu(), labels,
                          [self.class_names[i] for i in labels.tolist()],
                          [self.category_ids[i] for i in labels.tolist()])

    def predict_batches(self, images: Sequence[ImageInput], top_k: int = 100) -> Iterator[list[Detections]]:
        """:meth:`predict_batch` over consecutive chunks of ``batch_size`` images (for a progress bar)."""
        for start in range(0, len(images), self.batch_size):
            yield self.predict_batch(images[start:start + self.batch_size], top_k)

    def predict(self, images: Iterable[ImageInput] | ImageInput, top_k: int = 100,
                score_threshold: float = 0.0) -> list[Detections]:
        """Detections for each image (one image may be passed alone), the ``top_k`` best per image that score
        at least ``score_threshold``."""
        single = isinstance(images, (str, Path, Image.Image))
        batch = [images] if single else list(images)
        return [found.above(score_threshold) for chunk in self.predict_batches(batch, top_k) for found in chunk]
