"""UP-DETR's one-shot use: given a patch image, find the regions of an image that look like it.

This is the pretext's own objective exposed as a feature. The patch is encoded as in pretraining (the
detector's frozen backbone, deepest stage, global average pool, of the patch resized to the pretraining's
patch side), projected and added to the decoder queries. Pretraining fed ``num_patches`` patches to as many
query groups, kept apart by a block-diagonal attention mask; here every group gets the same patch, so each
query sees what it saw in training, and the boxes of all groups are ranked together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from detr_ssl.box_ops import box_iou
from detr_ssl.datasets import collate_detection, make_eval_transforms
from detr_ssl.datasets.transforms import Normalize, ToTensor
from detr_ssl.detector import load_detector
from detr_ssl.errors import CheckpointError
from detr_ssl.evaluation import postprocess
from detr_ssl.models.checkpoint_io import load_untrusted
from detr_ssl.models.crops import crop_and_resize
from detr_ssl.predictor import Detections, prepare_image
from detr_ssl.tasks.updetr import QUERY_PATCH_KEY, UpDetrModel, query_groups, sample_patches

__all__ = ["PATCH_NAME", "PatchSearch", "QueryPatchDetector", "patch_search_hits"]

PATCH_NAME = "patch"


class QueryPatchDetector:
    """A UP-DETR model that finds a query patch in images; build it with :meth:`from_checkpoint`."""

    def __init__(self, model: UpDetrModel, input_size: tuple[int, int], patch_size: int, num_patches: int,
                 queries_per_patch: int) -> None:
        self.model = model.eval()
        self.transforms = make_eval_transforms(*input_size)
        self.patch_size = patch_size
        self.groups = query_groups(num_patches, queries_per_patch, shuffle=False)
        self.num_patches = num_patches

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        checkpoint: Any = None) -> QueryPatchDetector:
        """The model in a ``pretrained.pth`` written by ``--task updetr`` (``checkpoint``: its content, when
        the caller has read it already)."""
        path = Path(path)
        checkpoint = load_untrusted(path) if checkpoint is None else checkpoint
        extras = checkpoint.get(QUERY_PATCH_KEY) if isinstance(checkpoint, dict) else None
        if not isinstance(extras, dict):
            raise CheckpointError(f"{path}: query-patch detection needs the pretrained.pth of a model pretrained "
                                  f"with --task updetr (this file holds no patch projection)")
        loaded = load_detector(path, device, checkpoint)
        model = UpDetrModel(loaded.model, loaded.model.backbone.channels[-1], mask_ratio=0.0)
        model.patch_projection.load_state_dict(extras["patch_projection"])
        return cls(model.to(device), loaded.input_size or (800, 1333), int(extras["patch_size"]),
                   int(extras["num_patches"]), int(extras["queries_per_patch"]))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_patch(self, patch: Image.Image) -> Tensor:
        """``(F,)``: the patch normalised, resized to the pretraining's patch side and encoded."""
        pixels, _ = Normalize()(*ToTensor()(patch.convert("RGB"), {}))
        whole = torch.tensor([[0.0, 0.0, pixels.shape[2], pixels.shape[1]]])
        crop = crop_and_resize(pixels[None].to(self.device), [whole], self.patch_size)
        return self.model.encode_patches(crop)[0]

    @torch.no_grad()
    def find(self, image: Image.Image | str | Path, patch: Image.Image, top_k: int = 100) -> Detections:
        """Where ``patch`` appears in ``image``: boxes (absolute xyxy of the image) by decreasing score."""
        batch = collate_detection([prepare_image(image, self.transforms)]).to(self.device)
        features = self.encode_patch(patch).expand(1, self.num_patches, -1)
        output, _ = self.model(batch.images, batch.mask, features, self.groups.to(self.device))
        found = postprocess(output, torch.stack([t["orig_size"] for t in batch.targets]), top_k=top_k)[0]
        count = len(found["scores"])
        return Detections(found["boxes"].cpu(), found["scores"].cpu(), found["labels"].cpu(), [PATCH_NAME] * count,
                          [1] * count)


@dataclass(frozen=True)
class PatchSearch:
    """One query patch cut from an image and what the model found for it."""

    source: Tensor
    """``(4,)`` absolute xyxy box the patch was cut from."""
    found: Tensor
    """``(4,)`` the model's best box."""
    iou: float


def patch_search_hits(finder: QueryPatchDetector, images: Sequence[Image.Image], patches_per_image: int,
                      min_side: int = 16, seed: int = 0) -> list[PatchSearch]:
    """For every image, ``patches_per_image`` random patches (each side uniform in [min_side, image side],
    as pretraining samples them) cut from it and searched for in it again."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        boxes = [sample_patches(torch.tensor([[image.height, image.width]]), patches_per_image, min_side)[0]
                 for image in images]
    finally:
        torch.random.set_rng_state(generator_state)
    searches = []
    for image, image_boxes in zip(images, boxes):
        for box in image_boxes:
            best = finder.find(image, image.crop(tuple(int(v) for v in box.tolist())), top_k=1).boxes[0]
            searches.append(PatchSearch(box, best, float(box_iou(box[None], best[None])[0, 0])))
    return searches
