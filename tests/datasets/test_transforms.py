import numpy as np
import pytest
import torch
from PIL import Image

from detr_ssl.datasets.coco import make_target
from detr_ssl.datasets.sizes import PAPER_TRAIN_SCALES
from detr_ssl.datasets.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResize,
    RandomSelect,
    RandomSizeCrop,
    ToTensor,
    make_eval_transforms,
    make_train_transforms,
)

# Two white rectangles on black, as absolute (x0, y0, x1, y1) pixels of a 120 x 90 image.
_BOXES = np.array([[10, 12, 50, 40], [70, 50, 110, 85]], dtype=np.float32)


def _sample() -> tuple[Image.Image, dict[str, torch.Tensor]]:
    pixels = np.zeros((90, 120, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in _BOXES.astype(int):
        pixels[y0:y1, x0:x1] = 255
    image = Image.fromarray(pixels)
    return image, make_target(_BOXES, np.array([3, 1]), 7, image)


def _assert_boxes_cover_white_pixels(image: torch.Tensor, target: dict[str, torch.Tensor], threshold: float) -> None:
    """Each box must match the bounding box of the white pixels inside it (to interpolation blur)."""
    height, width = image.shape[-2:]
    assert target["size"].tolist() == [height, width]
    white = image.mean(0) > threshold
    covered = torch.zeros_like(white)
    for cx, cy, w, h in (target["boxes"] * torch.tensor([width, height, width, height])).tolist():
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        inside = white[max(round(y0), 0) : round(y1), max(round(x0), 0) : round(x1)]
        ys, xs = torch.nonzero(inside, as_tuple=True)
        assert len(ys) > 0
        white_x0, white_x1 = xs.min().item() + round(x0), xs.max().item() + 1 + round(x0)
        white_y0, white_y1 = ys.min().item() + round(y0), ys.max().item() + 1 + round(y0)
        tolerance = 1.5
        assert abs(white_x0 - x0) <= tolerance and abs(white_x1 - x1) <= tolerance
        assert abs(white_y0 - y0) <= tolerance and abs(white_y1 - y1) <= tolerance
        covered[max(round(y0), 0) : round(y1), max(round(x0), 0) : round(x1)] = True
    # No white pixel is left without a box (a vanished box must not leave its object behind).
    assert not (_eroded(white) & ~covered).any()


def _eroded(mask: torch.Tensor) -> torch.Tensor:
    """Drop the 2-pixel rim of white regions, where resizing blurs edges beyond a box."""
    kernel = torch.ones(1, 1, 5, 5)
    return torch.nn.functional.conv2d(mask[None, None].float(), kernel, padding=2)[0, 0] >= 25


@pytest.mark.parametrize(
    "transform",
    [
        RandomHorizontalFlip(p=1.0),
        RandomResize([45]),
        RandomResize([200], max_size=210),
        RandomSizeCrop(40, 80),
        Compose([RandomHorizontalFlip(p=1.0), RandomSizeCrop(30, 70), RandomResize([64, 96], max_size=150)]),
    ],
    ids=repr,
)
def test_boxes_stay_on_their_pixels(transform: object) -> None:
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = transform(*_sample())
        image, target = ToTensor()(image, target)
        _assert_boxes_cover_white_pixels(image, target, threshold=0.5)
        assert len(target["labels"]) == len(target["boxes"])


def test_full_training_pipeline_keeps_boxes_on_pixels() -> None:
    transforms = make_train_transforms([64, 80, 96], max_size=160, crop=(40, 80))
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = transforms(*_sample())
        assert image.dtype == torch.float32 and image.shape[0] == 3
        _assert_boxes_cover_white_pixels(image, target, threshold=0.0)  # normalised: black < 0 < white


def test_flip_mirrors_centres() -> None:
    image, target = _sample()
    _, flipped = RandomHorizontalFlip(p=1.0)(image, target)
    torch.testing.assert_close(flipped["boxes"][:, 0], 1 - target["boxes"][:, 0])
    torch.testing.assert_close(flipped["boxes"][:, 1:], target["boxes"][:, 1:])


def test_resize_keeps_aspect_and_caps_long_side() -> None:
    image = Image.new("RGB", (300, 100))
    target = make_target(np.zeros((0, 4), np.float32), np.zeros(0), 0, image)
    resized, out = RandomResize([200], max_size=400)(image, target)
    assert resized.size == (400, 133)  # short side 200 would make the long side 600 > 400
    assert out["size"].tolist() == [133, 400]
    assert out["orig_size"].tolist() == [100, 300]


def test_crop_drops_vanished_boxes_with_their_per_box_fields() -> None:
    # Column x of the image has grey value x, so the crop's left edge can be read off the result.
    image = Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (50, 1))).convert("RGB")
    boxes = np.array([[0, 0, 10, 50], [60, 0, 100, 50], [40, 10, 60, 20]], dtype=np.float32)
    target = make_target(boxes, np.array([0, 1, 2]), 0, image)
    target["scores"] = torch.tensor([0.5, 0.6, 0.7])
    crop = RandomSizeCrop(50, 50)
    kept_first = dropped_first = 0
    for seed in range(30):
        torch.manual_seed(seed)
        cropped, out = crop(image, target)
        left = int(np.asarray(cropped)[0, 0, 0])
        expected = [label for label, visible in ((0, left < 10), (1, left > 10), (2, True)) if visible]
        assert out["labels"].tolist() == expected
        torch.testing.assert_close(out["scores"], torch.tensor([0.5, 0.6, 0.7])[expected])
        assert out["size"].tolist() == [50, 50]
        assert ((out["boxes"][:, :2] - out["boxes"][:, 2:] / 2) >= -1e-6).all()
        assert ((out["boxes"][:, :2] + out["boxes"][:, 2:] / 2) <= 1 + 1e-6).all()
        kept_first += 0 in expected
        dropped_first += 0 not in expected
    assert kept_first and dropped_first  # both situations were exercised


def test_random_select_uses_both_branches_and_torch_seed_reproduces() -> None:
    select = RandomSelect(RandomResize([30]), RandomResize([60]), p=0.5)
    sizes = []
    for seed in range(10):
        torch.manual_seed(seed)
        sizes.append(select(*_sample())[1]["size"][0].item())
    assert set(sizes) == {30, 60}
    torch.manual_seed(3)
    again = select(*_sample())[1]["size"][0].item()
    assert again == sizes[3]


def test_training_transforms_are_deterministic_given_torch_seed() -> None:
    transforms = make_train_transforms([64, 80, 96], max_size=160, crop=(40, 80))
    results = []
    for seed in (0, 0, 1, 2, 3):
        torch.manual_seed(seed)
        results.append(transforms(*_sample()))
    image_a, target_a = results[0]
    image_b, target_b = results[1]
    assert torch.equal(image_a, image_b) and torch.equal(target_a["boxes"], target_b["boxes"])
    assert any(image.shape != image_a.shape or not torch.equal(image, image_a) for image, _ in results[2:])


def test_eval_transforms_resize_and_normalise() -> None:
    image, target = _sample()
    tensor, out = make_eval_transforms(60, max_size=100)(image, target)
    assert tensor.shape == (3, 60, 80)
    torch.testing.assert_close(out["boxes"], target["boxes"])  # resizing keeps normalised boxes
    black = (torch.zeros(3) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(tensor[:, 0, 0], black)


def test_paper_defaults() -> None:
    assert PAPER_TRAIN_SCALES[0] == 480 and PAPER_TRAIN_SCALES[-1] == 800 and len(PAPER_TRAIN_SCALES) == 11
    transforms = make_train_transforms()
    select = transforms.transforms[1]
    assert isinstance(select, RandomSelect)
    assert select.second.transforms[0].sizes == [400, 500, 600]
    assert (select.second.transforms[1].min_size, select.second.transforms[1].max_size) == (384, 600)
    assert isinstance(transforms.transforms[-1], Normalize)
