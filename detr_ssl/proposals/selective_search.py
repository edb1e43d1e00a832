"""Unsupervised box proposals with OpenCV's selective search, as DetReg uses them (PROTOCOLS.md).

As DetReg's released code runs it: the RGB pixels are squashed to ``resize x resize`` (aspect ratio not
kept; OpenCV's default bilinear interpolation) and handed to OpenCV as they are (no conversion to the BGR
order OpenCV's colour spaces assume), searched in fast mode, and the boxes are scaled back to the original
image. Boxes keep the order selective search returns them in, and only the first ``top_k`` survive.

Determinism: OpenCV ranks regions by ``level * rand()``, using the C library's global ``rand()``. Left
alone, two runs on the same image return boxes in different orders, so the first ``top_k`` differ. We
seed ``rand()`` with ``settings.seed`` right before each search (under a lock, so threads of this process
cannot interleave), which makes the result a function of the pixels and the settings only. Where the C
library's ``srand`` cannot be reached through ctypes (not the case on Linux or macOS) results vary run
to run.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from detr_ssl.errors import ConfigError
from detr_ssl.tasks.options.proposals import ProposalMode

__all__ = ["ProposalMode", "ProposalSettings", "selective_search_boxes"]

#: Bump when the pipeline around OpenCV changes (resize, filtering, seeding): it is part of every
#: fingerprint, so caches written by an older pipeline become misses instead of silently mixing in.
ALGORITHM_VERSION = 2

_RAND_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProposalSettings:
    """Everything that changes the proposals of an image; the cache is keyed by `fingerprint`.

    Args:
        resize: side of the square the image is resized to before the search (DetReg: 128).
        top_k: boxes kept per image, the first ones selective search returns (DetReg: 30).
        mode: OpenCV's ``fast`` (DetReg) or ``quality`` strategy set (slower, more boxes).
        seed: seed of the C ``rand()`` that OpenCV ranks regions with (see the module docstring).
    """

    resize: int = 128
    top_k: int = 30
    mode: ProposalMode = "fast"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resize < 8:
            raise ConfigError(f"proposal resize must be at least 8 pixels, got {self.resize}")
        if self.top_k < 1:
            raise ConfigError(f"proposal top_k must be at least 1, got {self.top_k}")
        if self.mode not in ("fast", "quality"):
            raise ConfigError(f"proposal mode must be 'fast' or 'quality', got {self.mode!r}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"proposal seed must be in [0, 2**32), got {self.seed}")

    def fingerprint(self) -> str:
        """A short, stable, file-name-safe string naming these settings, e.g. ``ss1-fast-128px-top30-seed0``."""
        return f"ss{ALGORITHM_VERSION}-{self.mode}-{self.resize}px-top{self.top_k}-seed{self.seed}"


def selective_search_boxes(image: np.ndarray, settings: ProposalSettings = ProposalSettings()) -> np.ndarray:
    """Selective-search proposals of one image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB pixels.
        settings: resize, number of boxes, strategy and seed.

    Returns:
        float32 ``(k, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels of ``image``, ``k <= settings.top_k``, in
        selective search's order (every box is at least one pixel of the resized image a side).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    side = settings.resize
    small = cv2.resize(np.ascontiguousarray(image), (side, side))
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(small)
    if settings.mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    with _RAND_LOCK:
        if _c_srand is not None:
            _c_srand(settings.seed)
        rects = search.process()
    xywh = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64) / side
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) * scale
    return np.ascontiguousarray(xyxy[: settings.top_k], dtype=np.float32)


def _load_c_srand() -> Callable[[int], None] | None:
    """The C library's ``srand`` (the generator OpenCV's selective search draws from), if reachable."""
    try:
        srand = ctypes.CDLL(None).srand
    except (OSError, TypeError, AttributeError):
        return None
    srand.argtypes = [ctypes.c_uint]
    srand.restype = None
    return srand


_c_srand = _load_c_srand()
