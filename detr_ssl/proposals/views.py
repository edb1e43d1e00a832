"""Two-view batches that carry each image's box proposals (CCOP's object-level pairs).

A sample is the image's multi-crop views plus its selective-search proposals in *original-image* pixels;
the views' geometry (:class:`~detr_ssl.datasets.multicrop.ViewGeometry`) maps the proposals into every view
(:func:`boxes_in_view`), where :func:`box_pairs` keeps the ones both views show. As in CCOP's released
loader (``ContrastiveBox`` / ``ScaleInstanceContrastAug``): a box is kept in a view when more than
``part_threshold`` of its area lies inside the crop (it is then clipped to the view), a view is redrawn up to
``max_tries`` times until it keeps a box, and a pair needs more than ``min_area`` view pixels in both views.
The proposals themselves are filtered as the released proposal script does (aspect ratio, size, NMS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import nms

from detr_ssl.blocks.geometry import image_to_view
from detr_ssl.box_ops import box_area, cxcywh_to_xyxy
from detr_ssl.datasets.multicrop import CropSpec, View, ViewGeometry, Views, ViewTransform, collate_views
from detr_ssl.proposals.dataset import ProposalDataset

__all__ = ["BoxPairs", "ProposalFilter", "ProposalViewDataset", "ProposalViews", "box_pairs", "boxes_in_view",
           "collate_proposal_views", "filter_proposals"]


@dataclass
class ProposalViews(Views):
    """:class:`Views` plus each image's proposals: ``proposals`` float ``(B, K, 4)`` xyxy in pixels of the
    original image (zero rows past an image's count), ``proposal_mask`` bool ``(B, K)`` which rows are boxes."""

    proposals: Tensor = field(default_factory=lambda: torch.zeros(0, 0, 4))
    proposal_mask: Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ProposalViews:
        views = super().to(device, non_blocking)
        return ProposalViews(views.crops, views.geometry, self.proposals.to(device, non_blocking=non_blocking),
                             self.proposal_mask.to(device, non_blocking=non_blocking))


class ViewBoxes(NamedTuple):
    """Proposals seen in one view, all ``(B, K, ...)``."""

    boxes: Tensor
    """``(B, K, 4)`` xyxy in view pixels, clipped to the view (a flip mirrors them)."""
    visible: Tensor
    """``(B, K)`` fraction of each box's area inside the crop (0 for an empty box)."""
    area: Tensor
    """``(B, K)`` area of the clipped box, in view pixels."""


def boxes_in_view(boxes: Tensor, geometry: ViewGeometry, size: tuple[int, int]) -> ViewBoxes:
    """Maps ``(B, K, 4)`` original-image boxes into the view of ``size`` (height, width) that ``geometry``
    describes (:func:`~detr_ssl.blocks.geometry.image_to_view`), and clips them to it."""
    count = boxes.shape[1]
    corners = image_to_view(boxes.reshape(len(boxes), 2 * count, 2), geometry.boxes, geometry.flipped, size)
    corners = corners.reshape(len(boxes), count, 2, 2)
    mapped = torch.cat((corners.amin(dim=2), corners.amax(dim=2)), dim=-1)
    height, width = size
    clipped = torch.minimum(mapped.clamp(min=0), mapped.new_tensor([width, height, width, height]))
    full, inside = box_area(mapped), box_area(clipped)
    visible = torch.where(full > 0, inside / full.clamp(min=torch.finfo(full.dtype).tiny), torch.zeros_like(full))
    return ViewBoxes(clipped, visible, inside)


class BoxPairs(NamedTuple):
    """The proposals both views show: ``query`` and ``key`` ``(B, K, 4)`` xyxy boxes in view 0's and view 1's
    pixels, ``keep`` ``(B, K)`` bool which rows are such pairs."""

    query: Tensor
    key: Tensor
    keep: Tensor


def box_pairs(batch: ProposalViews, part_threshold: float, min_area: float) -> BoxPairs:
    """The proposals kept in both views (more than ``part_threshold`` of the box inside each crop, and more
    than ``min_area`` view pixels left in each), in view 0's (query) and view 1's (key) pixels."""
    seen = [boxes_in_view(batch.proposals, batch.geometry[v], tuple(batch.crops[v].shape[-2:])) for v in (0, 1)]
    keep = batch.proposal_mask.clone()
    for view in seen:
        keep &= (view.visible > part_threshold) & (view.area > min_area)
    return BoxPairs(seen[0].boxes, seen[1].boxes, keep)


@dataclass(frozen=True)
class ProposalFilter:
    """What the released proposal script (``tools/selective_search.py``) removes from the proposals."""

    min_size: float = 20.0
    """Boxes whose side ``sqrt(w h)`` is at most this (original pixels) are dropped."""
    max_aspect: float = 3.0
    """Boxes whose ``w / h`` is not strictly between ``1 / max_aspect`` and ``max_aspect`` are dropped."""
    nms_iou: float = 0.5
    """Non-maximum suppression in selective search's order: a box overlapping an earlier kept one with IoU
    above this is dropped (1 keeps all)."""


def filter_proposals(boxes: Tensor, rules: ProposalFilter) -> Tensor:
    """The ``(K, 4)`` xyxy proposals that pass ``rules``, in their order."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ratio = widths / heights.clamp(min=torch.finfo(boxes.dtype).tiny)
    large = torch.sqrt(widths * heights) > rules.min_size
    boxes = boxes[(ratio > 1 / rules.max_aspect) & (ratio < rules.max_aspect) & large]
    if rules.nms_iou >= 1 or len(boxes) == 0:
        return boxes
    order_scores = torch.arange(len(boxes), 0, -1, dtype=boxes.dtype)
    return boxes[nms(boxes, order_scores, rules.nms_iou).sort().values]


class ProposalViewDataset(Dataset):
    """Items ``(views, proposals)``: one :class:`View` per spec and the image's filtered proposals, float
    ``(K, 4)`` xyxy in original pixels.

    Args:
        proposals: the images with their proposals (targets in the library's cxcywh convention), built
            without transforms (:func:`detr_ssl.proposals.options.proposal_dataset`).
        specs: the views.
        rules: proposal filtering.
        part_threshold: a box counts as kept in a view when more than this fraction of it lies in the crop.
        max_tries: views drawn until one keeps a box; the last is used if none does.
    """

    def __init__(self, proposals: ProposalDataset, specs: Sequence[CropSpec], rules: ProposalFilter,
                 part_threshold: float, max_tries: int) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}")
        self.proposals = proposals
        self.rules = rules
        self.part_threshold = part_threshold
        self.max_tries = max_tries
        self._transforms = [ViewTransform(spec) for spec in specs]

    def __len__(self) -> int:
        return len(self.proposals)

    def __getitem__(self, index: int) -> tuple[list[View], Tensor]:
        image, target = self.proposals[index]
        height, width = (int(v) for v in target["orig_size"])
        boxes = cxcywh_to_xyxy(target["boxes"]) * target["boxes"].new_tensor([width, height, width, height])
        boxes = filter_proposals(boxes, self.rules)
        return [self._draw(transform, image, boxes) for transform in self._transforms], boxes

    def _draw(self, transform: ViewTransform, image: Image.Image, boxes: Tensor) -> View:
        """A view that keeps at least one box, redrawn up to ``max_tries`` times (as released)."""
        for _ in range(self.max_tries):
            view = transform(image)
            if len(boxes) == 0:  # nothing to keep (the release then takes its first crop)
                break
            geometry = ViewGeometry(view.box[None], torch.tensor([view.flipped]), view.image_size[None])
            seen = boxes_in_view(boxes[None], geometry, tuple(view.image.shape[-2:]))
            if bool((seen.visible > self.part_threshold).any()):
                break
        return view


def collate_proposal_views(samples: Sequence[tuple[Sequence[View], Tensor]]) -> ProposalViews:
    """Stacks the views (:func:`collate_views`) and zero-pads the proposals to the batch's largest count."""
    views = collate_views([sample[0] for sample in samples])
    counts = [len(sample[1]) for sample in samples]
    proposals = torch.zeros(len(samples), max(counts, default=0), 4)
    mask = torch.zeros(len(samples), proposals.shape[1], dtype=torch.bool)
    for row, (sample, count) in enumerate(zip(samples, counts)):
        proposals[row, :count] = sample[1]
        mask[row, :count] = True
    return ProposalViews(views.crops, views.geometry, proposals, mask)
