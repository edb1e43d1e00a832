"""Multi-crop views as the released SwAV makes them: every crop, global and local, is flipped, colour
distorted (strength 1, p 0.8), greyscaled (p 0.2) and blurred (p 0.5, sigma in [0.1, 2]); DenseCL keeps
MoCo v2's half-strength jitter. Rates are counted over many seeded views, so a missing or mis-weighted
step fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from detr_ssl.datasets.multicrop import BLUR_SIGMA, CropSpec, MultiCropDataset, ViewTransform, collate_views
from detr_ssl.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from detr_ssl.tasks import get_task

VIEWS_PER_KIND = 500


def colourful_image(seed: int = 0) -> Image.Image:
    """Saturated colour noise: no crop of it is grey unless greyscaled."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 96, 3), dtype=np.uint8))


def task_views(name: str) -> MultiCropDataset:
    """The multi-crop dataset the task trains on (its demo preset's crops)."""
    config = get_task(name).preset_config("demo")
    dataset = get_task(name)(config).build_dataset([(colourful_image(), None)])
    assert isinstance(dataset, MultiCropDataset)
    return dataset


def is_grey(view: torch.Tensor) -> bool:
    pixels = view * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return bool((pixels - pixels[:1]).abs().max() < 1e-4)


def jitter_ranges(transform) -> list[list[float]]:
    """The brightness, contrast, saturation and hue ranges (8 numbers) of every ColorJitter in ``transform``,
    however nested."""
    found = []
    if isinstance(transform, T.ColorJitter):
        found.append([*transform.brightness, *transform.contrast, *transform.saturation, *transform.hue])
    for inner in getattr(transform, "transforms", []):
        found += jitter_ranges(inner)
    return found


@pytest.mark.parametrize("kind", ["global", "local"])
def test_every_swav_crop_is_jittered_greyed_and_blurred_at_the_released_rates(kind: str, monkeypatch) -> None:
    dataset = task_views("swav")
    num_global = dataset.specs.count(dataset.specs[0])
    assert 0 < num_global < len(dataset.specs)  # the demo has both kinds
    spec = dataset.specs[0] if kind == "global" else dataset.specs[-1]
    transform = ViewTransform(spec)

    jittered: list[int] = []
    real_jitter = T.ColorJitter.forward
    monkeypatch.setattr(T.ColorJitter, "forward", lambda self, img: (jittered.append(1), real_jitter(self, img))[1])
    radii: list[float] = []
    real_filter = Image.Image.filter

    def spy_filter(self, kernel):
        if isinstance(kernel, ImageFilter.GaussianBlur):
            radii.append(kernel.radius)
        return real_filter(self, kernel)

    monkeypatch.setattr(Image.Image, "filter", spy_filter)
    image = colourful_image()
    torch.manual_seed(0)
    views = [transform(image).image for _ in range(VIEWS_PER_KIND)]

    assert all(view.shape == (3, spec.size, spec.size) for view in views)
    rates = {"jitter": len(jittered) / VIEWS_PER_KIND, "grey": sum(map(is_grey, views)) / VIEWS_PER_KIND,
             "blur": len(radii) / VIEWS_PER_KIND}
    assert rates["jitter"] == pytest.approx(0.8, abs=0.06), rates
    assert rates["grey"] == pytest.approx(0.2, abs=0.06), rates
    assert rates["blur"] == pytest.approx(0.5, abs=0.07), rates
    assert BLUR_SIGMA == (0.1, 2.0)
    assert min(radii) >= 0.1 and max(radii) <= 2.0 and min(radii) < 0.3 and max(radii) > 1.8  # uniform over it


def test_swav_jitters_at_strength_one_and_densecl_at_half() -> None:
    for spec in task_views("swav").specs:  # the released SwAV: ColorJitter(0.8, 0.8, 0.8, 0.2)
        (ranges,) = jitter_ranges(ViewTransform(spec).photometric)
        assert ranges == pytest.approx([0.2, 1.8, 0.2, 1.8, 0.2, 1.8, -0.2, 0.2])
    for spec in task_views("densecl").specs:  # the released DenseCL: ColorJitter(0.4, 0.4, 0.4, 0.1)
        (ranges,) = jitter_ranges(ViewTransform(spec).photometric)
        assert ranges == pytest.approx([0.6, 1.4, 0.6, 1.4, 0.6, 1.4, -0.1, 0.1])
        assert spec.blur_probability == 0.5


def test_views_follow_torchs_seed() -> None:
    dataset = task_views("swav")
    torch.manual_seed(3)
    first = dataset[0]
    torch.manual_seed(3)
    again = dataset[0]
    torch.manual_seed(4)
    other = dataset[0]
    assert all(torch.equal(a.image, b.image) and torch.equal(a.box, b.box) for a, b in zip(first, again))
    assert not all(torch.equal(a.image, b.image) for a, b in zip(first, other))


def test_a_view_records_the_crop_and_flip_it_shows() -> None:
    """The recorded box and flip reproduce the view: cropping the original at the box, resizing and (when
    flipped) mirroring gives the view's pixels before the colour augmentation."""
    image = colourful_image(seed=1).resize((120, 90))
    spec = CropSpec(32, (0.2, 0.6), color_strength=0.0, blur_probability=0.0)
    transform = ViewTransform(spec)
    transform.photometric = T.ToTensor()  # geometry only
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        view = transform(image)
        x0, y0, x1, y1 = view.box.int().tolist()
        assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 90 and view.image_size.tolist() == [90, 120]
        expected = image.crop((x0, y0, x1, y1)).resize((32, 32), Image.BILINEAR, reducing_gap=None)
        if view.flipped:
            expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
        assert (view.image - T.ToTensor()(expected)).abs().mean() < 0.02
        flips.add(view.flipped)
    assert flips == {True, False}


def test_collated_views_carry_their_geometry() -> None:
    dataset = MultiCropDataset([(colourful_image(seed=s), None) for s in range(3)],
                               [CropSpec(32, (0.2, 1.0)), CropSpec(16, (0.05, 0.2))])
    torch.manual_seed(0)
    samples = [dataset[i] for i in range(3)]
    batch = collate_views(samples)
    assert [crop.shape for crop in batch.crops] == [(3, 3, 32, 32), (3, 3, 16, 16)]
    for v, geometry in enumerate(batch.geometry):
        assert torch.equal(geometry.boxes, torch.stack([sample[v].box for sample in samples]))
        assert geometry.flipped.tolist() == [sample[v].flipped for sample in samples]
        assert geometry.image_sizes.tolist() == [[96, 96]] * 3


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_solarize_inverts_bright_pixels_when_asked(probability: float) -> None:
    grey = Image.new("RGB", (64, 48), (200, 200, 200))  # unchanged by greyscale and by a blur
    spec = CropSpec(16, (0.5, 1.0), jitter=(0.0, 0.0, 0.0, 0.0), blur_probability=0.0,
                    solarize_probability=probability)
    view = ViewTransform(spec)(grey).image
    pixels = view * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    expected = (255 - 200) / 255 if probability else 200 / 255
    torch.testing.assert_close(pixels, torch.full_like(pixels, expected), atol=1e-5, rtol=0)
