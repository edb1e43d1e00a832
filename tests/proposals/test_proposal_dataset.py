"""ProposalDataset: proposals as class-agnostic cxcywh targets that follow the detection transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from detr_ssl.datasets import ImageFolderDataset, make_eval_transforms
from detr_ssl.datasets.transforms import Compose, RandomHorizontalFlip, ToTensor
from detr_ssl.proposals import ProposalDataset, ProposalProvider, ProposalSettings

SETTINGS = ProposalSettings(top_k=20)


class _FixedProvider(ProposalProvider):
    """Returns the given boxes for every image (no selective search: the dataset logic alone is tested)."""

    def __init__(self, boxes: np.ndarray) -> None:
        super().__init__(SETTINGS)
        self._boxes = boxes

    def boxes(self, image_path, image=None) -> np.ndarray:
        return self._boxes


def test_target_holds_the_proposals_in_the_library_contract(photo_folder: Callable[[int], Path]) -> None:
    images = ImageFolderDataset(photo_folder(2))
    provider = ProposalProvider(SETTINGS)
    dataset = ProposalDataset(images, provider)
    with pytest.warns(UserWarning):
        image, target = dataset[1]
    width, height = image.size
    xyxy = provider.boxes(images.image_paths[1])
    k = len(xyxy)
    assert 0 < k <= SETTINGS.top_k
    assert target["boxes"].shape == (k, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64 and (target["labels"] == 0).all() and target["labels"].shape == (k,)
    assert int(target["image_id"]) == 1
    assert target["orig_size"].tolist() == target["size"].tolist() == [height, width]
    cx, cy, w, h = target["boxes"].unbind(-1)
    expected = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                            (cy + h / 2) * height], -1)
    torch.testing.assert_close(expected, torch.as_tensor(xyxy), atol=1e-3, rtol=0)
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_boxes_follow_a_horizontal_flip(photo_folder: Callable[[int], Path]) -> None:
    images = ImageFolderDataset(photo_folder(1))
    boxes = np.array([[0, 0, 40, 30], [100, 50, 250, 200]], dtype=np.float32)
    plain = ProposalDataset(images, _FixedProvider(boxes), Compose([ToTensor()]))
    flipped = ProposalDataset(images, _FixedProvider(boxes), Compose([RandomHorizontalFlip(p=1.0), ToTensor()]))
    image, target = plain[0]
    mirror, mirror_target = flipped[0]
    torch.testing.assert_close(mirror, image.flip(-1))
    width = image.shape[-1]
    x0 = (mirror_target["boxes"][:, 0] - mirror_target["boxes"][:, 2] / 2) * width
    torch.testing.assert_close(x0, width - torch.as_tensor(boxes[:, 2]))
    torch.testing.assert_close(mirror_target["boxes"][:, 1:], target["boxes"][:, 1:])


def test_an_image_without_proposals_gives_an_empty_target(photo_folder: Callable[[int], Path]) -> None:
    images = ImageFolderDataset(photo_folder(1))
    dataset = ProposalDataset(images, _FixedProvider(np.zeros((0, 4), np.float32)), make_eval_transforms(64, 100))
    image, target = dataset[0]
    assert image.shape[0] == 3 and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_images_built_with_transforms_are_refused(photo_folder: Callable[[int], Path]) -> None:
    images = ImageFolderDataset(photo_folder(1), transforms=Compose([ToTensor()]))
    with pytest.raises(ValueError, match="without transforms"):
        ProposalDataset(images, ProposalProvider(SETTINGS))
