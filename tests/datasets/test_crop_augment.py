"""Batched per-crop augmentation (DetReg's teacher crops): each op equals torchvision's / PIL's on one crop,
and each step happens to the released share of the crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as TF

from detr_ssl.datasets.crop_augment import CropAugmentation, adjust_hue, color_jitter, gaussian_blur, grayscale

CROPS = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(0))
FACTORS = torch.tensor([0.6, 0.8, 1.0, 1.1, 1.25, 1.4])
IDENTITY = torch.ones(6)


@pytest.mark.parametrize(("op", "reference"), [(0, TF.adjust_brightness), (1, TF.adjust_contrast),
                                               (2, TF.adjust_saturation)])
def test_each_jitter_factor_is_torchvisions(op: int, reference) -> None:
    factors = [FACTORS if i == op else IDENTITY for i in range(3)]
    order = torch.tensor([op, *(o for o in range(4) if o != op)]).repeat(6, 1)
    out = color_jitter(CROPS, *factors, torch.zeros(6), order)
    expected = torch.stack([reference(crop, float(f)) for crop, f in zip(CROPS, FACTORS)])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [-0.1, 0.03, 0.5])
def test_hue_is_torchvisions(shift: float) -> None:
    torch.testing.assert_close(adjust_hue(CROPS, torch.full((6,), shift)), TF.adjust_hue(CROPS, shift),
                               atol=2e-6, rtol=0)


def test_jitter_order_is_per_crop() -> None:
    """Brightness then contrast differs from contrast then brightness once clipping is involved."""
    bright, contrast = torch.full((6,), 1.4), torch.full((6,), 0.6)
    first = color_jitter(CROPS, bright, contrast, IDENTITY, torch.zeros(6), torch.tensor([[0, 1, 2, 3]] * 6))
    second = color_jitter(CROPS, bright, contrast, IDENTITY, torch.zeros(6), torch.tensor([[1, 0, 2, 3]] * 6))
    mixed = color_jitter(CROPS, bright, contrast, IDENTITY, torch.zeros(6),
                         torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]] * 3))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(mixed[0::2], first[0::2])
    torch.testing.assert_close(mixed[1::2], second[1::2])


def test_grayscale_is_torchvisions() -> None:
    torch.testing.assert_close(grayscale(CROPS), TF.rgb_to_grayscale(CROPS), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0, 1.7, 2.0])
def test_blur_is_pils_gaussian_blur(sigma: float) -> None:
    pixels = (np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8)
    pil = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=sigma)), np.float32) / 255
    crops = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    ours = gaussian_blur(crops.repeat(2, 1, 1, 1), torch.tensor([sigma, 2.0]))[0].permute(1, 2, 0).numpy()
    # PIL rounds to 8 bits after each of its six passes; we do not (at sigma 0.1 that is 3 levels).
    assert np.abs(ours - pil).max() < 4 / 255
    assert np.abs(ours - crops[0].permute(1, 2, 0).numpy()).mean() > 0.004  # it did blur


def test_each_step_hits_the_released_share_of_crops() -> None:
    torch.manual_seed(0)
    crops = torch.rand(2000, 3, 4, 4) * 0.5 + 0.25
    crops[:, :, :, 2:] = crops[:, :, :, :2]  # left and right halves alike: blur keeps a crop's mean
    isolated = {"jitter": CropAugmentation(grayscale_p=0, blur_p=0), "gray": CropAugmentation(jitter_p=0, blur_p=0),
                "blur": CropAugmentation(jitter_p=0, grayscale_p=0)}
    shares = {}
    for name, augment in isolated.items():
        out = augment(crops)
        shares[name] = float((out - crops).abs().amax(dim=(1, 2, 3)).gt(1e-6).float().mean())
    assert abs(shares["jitter"] - 0.8) < 0.04 and abs(shares["gray"] - 0.2) < 0.04
    assert abs(shares["blur"] - 0.5) < 0.04


def test_draws_follow_the_global_seed_and_keep_range() -> None:
    torch.manual_seed(5)
    first = CropAugmentation()(CROPS)
    torch.manual_seed(5)
    torch.testing.assert_close(CropAugmentation()(CROPS), first)
    assert first.min() >= 0 and first.max() <= 1 and first.shape == CROPS.shape
    assert CropAugmentation()(CROPS[:0]).shape == (0, 3, 12, 12)
