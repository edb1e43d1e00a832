"""Per-crop photometric augmentation of a whole batch of crops at once (DetReg's teacher inputs).

DetReg's released code augments every proposal crop on its own before the frozen teacher embeds it,
SimCLR-style: colour jitter (brightness, contrast, saturation 0.4, hue 0.1, in a random order) with
probability 0.8, greyscale with probability 0.2, Gaussian blur with a standard deviation drawn from
[0.1, 2] with probability 0.5. A step has hundreds of crops, so here every random choice is drawn per
crop but applied to the whole ``(N, 3, S, S)`` tensor at once: no Python loop over crops.

The operations follow torchvision's definitions on float images in [0, 1] (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``); the blur is PIL's
``GaussianBlur(radius=sigma)`` (three box blurs with the variance of a Gaussian of std ``sigma``).
Random numbers come from torch's global CPU generator (so a seeded or resumed run repeats them) and the
parameters are moved to the crops' device, which keeps CPU and GPU runs alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BLUR_SIGMA", "CropAugmentation", "adjust_hue", "color_jitter", "gaussian_blur", "grayscale"]

#: Range of the blur's standard deviation in pixels (SimCLR's, kept by SwAV, MoCo v2 / DenseCL and DetReg).
BLUR_SIGMA = (0.1, 2.0)

_LUMA = (0.2989, 0.587, 0.114)


def grayscale(images: Tensor) -> Tensor:
    """``(N, 3, H, W)`` -> ``(N, 1, H, W)`` luma, torchvision's weights."""
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _per_crop(values: Tensor, images: Tensor) -> Tensor:
    return values.to(images.device, images.dtype).view(-1, 1, 1, 1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * images + (1 - factor) * other``, clipped to [0, 1] (torchvision's ``_blend``)."""
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def _rgb_to_hsv(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=1)
    maxc, _ = images.max(dim=1)
    minc, _ = images.min(dim=1)
    delta = maxc - minc
    grey = delta == 0
    safe_delta = torch.where(grey, torch.ones_like(delta), delta)
    saturation = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    rc, gc, bc = ((maxc - c) / safe_delta for c in (r, g, b))
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    return torch.stack(((hue / 6.0) % 1.0, saturation, maxc), dim=1)


def _hsv_to_rgb(images: Tensor) -> Tensor:
    hue, saturation, value = images.unbind(dim=1)
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.long() % 6
    p = (value * (1.0 - saturation)).clamp(0, 1)
    q = (value * (1.0 - saturation * fraction)).clamp(0, 1)
    t = (value * (1.0 - saturation * (1.0 - fraction))).clamp(0, 1)
    # Sector k of the hue circle takes (r, g, b) from this row k of (v, t, p, q) combinations.
    rows = ((value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q))
    table = torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)  # (N, 6, 3, H, W)
    index = sector[:, None, None].expand(-1, 1, 3, *hue.shape[1:])
    return table.gather(1, index).squeeze(1)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotates each crop's hue by ``shift`` ``(N,)`` turns (in [-0.5, 0.5])."""
    hsv = _rgb_to_hsv(images)
    hue = (hsv[:, 0] + shift.to(images.device, images.dtype).view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))


def color_jitter(images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor,
                 order: Tensor) -> Tensor:
    """torchvision's ``ColorJitter`` with per-crop factors ``(N,)`` and per-crop op order ``(N, 4)``.

    ``order[i]`` is a permutation of ``0..3`` = brightness, contrast, saturation, hue.
    """
    def apply(op: int, crops: Tensor, rows: Tensor) -> Tensor:
        if op == 0:
            return (crops * _per_crop(brightness[rows], crops)).clamp(0, 1)
        if op == 1:
            mean = grayscale(crops).mean(dim=(-3, -2, -1), keepdim=True)
            return _blend(crops, mean, _per_crop(contrast[rows], crops))
        if op == 2:
            return _blend(crops, grayscale(crops), _per_crop(saturation[rows], crops))
        return adjust_hue(crops, hue[rows])

    out = images.clone()
    for position in range(4):
        for op in range(4):
            rows = (order[:, position] == op).nonzero().squeeze(1)
            if len(rows):
                out[rows.to(out.device)] = apply(op, out[rows.to(out.device)], rows)
    return out


#: PIL approximates a Gaussian blur by this many box blurs in a row.
_BOX_PASSES = 3


def _box_kernels(sigma: Tensor) -> Tensor:
    """PIL's box for a Gaussian of std ``sigma`` ``(N,)`` in 3 passes: ``(N, 2R + 1)`` kernels.

    The box spans ``[-l, l]`` with weight 1 plus ``a`` at ``±(l + 1)``, a fractional radius ``l + a``
    chosen so that three passes have exactly the Gaussian's variance (Gwosdek et al., 2011, as PIL does).
    """
    variance = sigma.double() ** 2 / _BOX_PASSES
    whole = torch.floor((torch.sqrt(12 * variance + 1) - 1) / 2)
    fraction = (2 * whole + 1) * (whole * (whole + 1) - 3 * variance) / (6 * (variance - (whole + 1) ** 2))
    reach = int(whole.max()) + 1
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64).abs()[None]
    kernels = torch.where(offsets <= whole[:, None], 1.0, torch.where(offsets == whole[:, None] + 1,
                                                                      fraction[:, None], 0.0))
    return (kernels / kernels.sum(dim=1, keepdim=True)).float()


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Blurs crop ``i`` as PIL's ``GaussianBlur(radius=sigma[i])`` does: three box blurs whose combined
    variance is ``sigma[i]**2``, separable, edge pixels extended."""
    n, channels, height, width = images.shape
    kernels = _box_kernels(sigma).to(images.device, images.dtype).repeat_interleave(channels, dim=0)
    reach = kernels.shape[1] // 2
    flat = images.reshape(1, n * channels, height, width)
    for _ in range(_BOX_PASSES):
        flat = F.conv2d(F.pad(flat, (reach, reach, 0, 0), mode="replicate"),
                        kernels.view(-1, 1, 1, 2 * reach + 1), groups=n * channels)
    for _ in range(_BOX_PASSES):
        flat = F.conv2d(F.pad(flat, (0, 0, reach, reach), mode="replicate"),
                        kernels.view(-1, 1, 2 * reach + 1, 1), groups=n * channels)
    return flat.view(n, channels, height, width)


@dataclass(frozen=True)
class CropAugmentation:
    """DetReg's released per-crop augmentation; call it on ``(N, 3, S, S)`` RGB crops in [0, 1].

    Args:
        brightness, contrast, saturation: jitter factors are drawn from ``[1 - x, 1 + x]``.
        hue: hue shifts are drawn from ``[-hue, hue]`` turns.
        jitter_p, grayscale_p, blur_p: probability of each step for each crop.
        blur_sigma: range of the blur's standard deviation in pixels.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = BLUR_SIGMA

    def __call__(self, crops: Tensor) -> Tensor:
        n = crops.shape[0]
        if n == 0:
            return crops
        jittered = torch.rand(n) < self.jitter_p
        factors = [1 + (torch.rand(n) * 2 - 1) * x for x in (self.brightness, self.contrast, self.saturation)]
        shift = (torch.rand(n) * 2 - 1) * self.hue
        order = torch.rand(n, 4).argsort(dim=1)
        to_gray = torch.rand(n) < self.grayscale_p
        blurred = torch.rand(n) < self.blur_p
        low, high = self.blur_sigma
        sigma = low + torch.rand(n) * (high - low)

        out = crops
        rows = jittered.nonzero().squeeze(1)
        if len(rows):
            out = out.clone()
            out[rows.to(out.device)] = color_jitter(out[rows.to(out.device)], *(f[rows] for f in factors),
                                                    shift[rows], order[rows])
        out = torch.where(_per_crop(to_gray, out).bool(), grayscale(out).expand_as(out), out)
        rows = blurred.nonzero().squeeze(1)
        if len(rows):
            out = out.clone()
            out[rows.to(out.device)] = gaussian_blur(out[rows.to(out.device)], sigma[rows])
        return out
