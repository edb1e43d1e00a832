"""Batched crops: equal to slicing the box out and resizing it, in image-then-box order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detr_ssl.models.crops import crop_and_resize, normalized_cxcywh_to_abs_xyxy

SIZE = 16


def _paste(image: torch.Tensor, patch: torch.Tensor, x0: int, y0: int) -> None:
    """Writes ``patch`` at (x0, y0) with a 1-pixel replicated border around it, in place.

    Bilinear enlargement of an image region reads half a pixel beyond the region's edge, where slicing
    then resizing clamps to the edge; a replicated border makes the two definitions agree exactly.
    """
    padded = F.pad(patch[None], (1, 1, 1, 1), mode="replicate")[0]
    image[:, y0 - 1 : y0 + patch.shape[1] + 1, x0 - 1 : x0 + patch.shape[2] + 1] = padded


def test_enlarged_crops_equal_slice_then_bilinear_resize() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 40, 50)
    placements = [[(3, 4, 7, 5), (20, 10, 15, 11)], [(30, 25, 12, 9)]]  # (x0, y0, w, h), all below SIZE
    patches, boxes = [], []
    for image, image_placements in zip(images, placements):
        image_boxes = []
        for x0, y0, w, h in image_placements:
            patch = torch.randn(3, h, w)
            _paste(image, patch, x0, y0)
            patches.append(patch)
            image_boxes.append([x0, y0, x0 + w, y0 + h])
        boxes.append(torch.tensor(image_boxes, dtype=torch.float32))

    crops = crop_and_resize(images, boxes, SIZE)

    expected = torch.cat([F.interpolate(p[None], size=SIZE, mode="bilinear", align_corners=False) for p in patches])
    torch.testing.assert_close(crops, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factor", [2, 3])
def test_shrunk_crops_average_the_whole_box(factor: int) -> None:
    """A box ``factor * S`` wide becomes the mean of each ``factor x factor`` block: no pixel is skipped."""
    torch.manual_seed(0)
    side = factor * SIZE
    images = torch.randn(1, 3, side + 10, side + 7)
    x0, y0 = 5, 3
    crops = crop_and_resize(images, [torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32)], SIZE)
    expected = F.avg_pool2d(images[:, :, y0 : y0 + side, x0 : x0 + side], factor)
    torch.testing.assert_close(crops, expected, atol=1e-5, rtol=1e-5)


def test_crops_follow_image_then_box_order_and_skip_empty_images() -> None:
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    boxes = [
        torch.tensor([[0.0, 0.0, 10.0, 12.0], [4.0, 6.0, 30.0, 20.0]]),
        torch.zeros(0, 4),
        torch.tensor([[8.0, 2.0, 24.0, 31.0]]),
    ]
    crops = crop_and_resize(images, boxes, SIZE)

    assert crops.shape == (3, 3, SIZE, SIZE)
    one_by_one = [crop_and_resize(images[i : i + 1], [box[None]], SIZE)
                  for i, image_boxes in enumerate(boxes) for box in image_boxes]
    torch.testing.assert_close(crops, torch.cat(one_by_one))


def test_all_empty_batch_gives_no_crops() -> None:
    crops = crop_and_resize(torch.randn(2, 3, 20, 20), [torch.zeros(0, 4), torch.zeros(0, 4)], SIZE)
    assert crops.shape == (0, 3, SIZE, SIZE)
    assert crops.dtype == torch.float32


def test_box_count_must_match_batch() -> None:
    with pytest.raises(ValueError, match="2 box tensors for a batch of 3"):
        crop_and_resize(torch.randn(3, 3, 20, 20), [torch.zeros(0, 4), torch.zeros(0, 4)], SIZE)


def test_normalized_boxes_become_pixel_corners() -> None:
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 0.5]])
    size = torch.tensor([40, 60])  # (H, W), as target["size"] holds it
    expected = torch.tensor([[0.0, 0.0, 60.0, 40.0], [0.0, 20.0, 30.0, 40.0]])
    torch.testing.assert_close(normalized_cxcywh_to_abs_xyxy(boxes, size), expected)
    torch.testing.assert_close(normalized_cxcywh_to_abs_xyxy(boxes, (40, 60)), expected)
