import functools

import pytest
import torch
from PIL import Image

from detr_ssl.datasets.collate import Batch, collate_detection


def _target(image_id: int, num_boxes: int) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.rand(num_boxes, 4),
        "labels": torch.zeros(num_boxes, dtype=torch.int64),
        "image_id": torch.tensor(image_id),
    }


def _samples() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    return [(torch.rand(3, 10, 20) + 1, _target(0, 2)), (torch.rand(3, 15, 12) + 1, _target(1, 0))]


def test_pads_bottom_right_with_zeros_and_masks_the_padding() -> None:
    samples = _samples()
    batch = collate_detection(samples)
    assert batch.images.shape == (2, 3, 15, 20)
    assert batch.mask.shape == (2, 15, 20) and batch.mask.dtype == torch.bool
    assert len(batch) == 2
    for i, (image, target) in enumerate(samples):
        _, h, w = image.shape
        assert torch.equal(batch.images[i, :, :h, :w], image)
        assert (batch.images[i, :, h:, :] == 0).all() and (batch.images[i, :, :, w:] == 0).all()
        assert not batch.mask[i, :h, :w].any()
        assert batch.mask[i].sum() == 15 * 20 - h * w
        assert batch.targets[i] is target


def test_pad_to_multiple() -> None:
    batch = collate_detection(_samples(), pad_to_multiple=8)
    assert batch.images.shape == (2, 3, 16, 24)
    assert batch.mask[:, 15:, :].all() and batch.mask[:, :, 20:].all()
    collate = functools.partial(collate_detection, pad_to_multiple=32)
    loader = torch.utils.data.DataLoader(_samples(), batch_size=2, collate_fn=collate)
    assert next(iter(loader)).images.shape == (2, 3, 32, 32)


def test_to_moves_images_mask_and_targets() -> None:
    moved = collate_detection(_samples()).to("meta")
    assert isinstance(moved, Batch)
    assert moved.images.is_meta and moved.mask.is_meta
    assert all(value.is_meta for target in moved.targets for value in target.values())


def test_rejects_images_that_are_not_tensors() -> None:
    with pytest.raises(TypeError, match="ToTensor"):
        collate_detection([(Image.new("RGB", (4, 4)), _target(0, 0))])
