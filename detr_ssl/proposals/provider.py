"""Proposals of an image on request: from the cache when it has them, else computed (or refused)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from detr_ssl.datasets.image_io import read_rgb_image
from detr_ssl.errors import DataError
from detr_ssl.proposals.cache import ProposalCache, ProposalCacheWarning, image_digest
from detr_ssl.proposals.selective_search import ProposalSettings, selective_search_boxes

__all__ = ["ProposalProvider"]


class ProposalProvider:
    """Hands out the selective-search boxes of images, reading the cache first.

    On a cache miss it either raises (``require_cache=True``: training should not silently spend ~0.1 s
    of CPU per image) or computes the boxes, stores them in the cache and warns once per provider and
    process; `misses` counts the images that were computed. Picklable, so it travels into DataLoader
    workers (each worker warns at most once).

    Args:
        settings: how proposals are computed; must be the cache's.
        cache: where precomputed proposals are read from and new ones are stored; None computes every time.
        require_cache: a miss raises `DataError` instead of computing.
    """

    def __init__(
        self, settings: ProposalSettings, cache: ProposalCache | None = None, require_cache: bool = False
    ) -> None:
        if cache is not None and cache.settings != settings:
            raise ValueError(f"the cache holds proposals for {cache.settings}, not for {settings}")
        if require_cache and cache is None:
            raise ValueError("require_cache=True needs a cache")
        self.settings = settings
        self.cache = cache
        self.require_cache = require_cache
        self.misses = 0

    def boxes(self, image_path: str | Path, image: Image.Image | np.ndarray | None = None) -> np.ndarray:
        """float32 ``(k, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels of the upright image at ``image_path``.

        Args:
            image_path: the image file (the cache is keyed by its bytes).
            image: its decoded pixels (as `read_rgb_image` returns them, or an ``(H, W, 3)`` uint8 RGB
                array), to skip decoding it again on a miss.

        Raises:
            DataError: ``require_cache`` and the cache has no valid entry for the image, or the image
                cannot be read.
        """
        image_path = Path(image_path)
        if self.cache is None:
            return self._compute(image_path, image)
        digest = image_digest(image_path)
        cached = self.cache.get(image_path, digest=digest)
        if cached is not None:
            return cached
        if self.require_cache:
            raise DataError(
                f"{image_path}: no box proposals for this image in the cache {self.cache.folder}; "
                f"compute them first with: python scripts/precompute_proposals.py --images <image folder or "
                f"COCO JSON> --cache {self.cache.root} {_settings_flags(self.settings)}"
            )
        boxes = self._compute(image_path, image)
        self.cache.put(image_path, boxes, digest=digest)
        return boxes

    def _compute(self, image_path: Path, image: Image.Image | np.ndarray | None) -> np.ndarray:
        self.misses += 1
        if self.misses == 1:
            where = f"missing from the cache {self.cache.folder}" if self.cache is not None else "not cached"
            warnings.warn(
                f"box proposals of {image_path} (and maybe other images) are {where}: running selective search "
                "on the fly, which is slow; precompute them with scripts/precompute_proposals.py "
                "(this warning is shown once; ProposalProvider.misses counts the images)",
                ProposalCacheWarning,
                stacklevel=3,
            )
        if image is None:
            image = read_rgb_image(image_path)
        if isinstance(image, Image.Image):
            image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return selective_search_boxes(image, self.settings)


def _settings_flags(settings: ProposalSettings) -> str:
    return f"--resize {settings.resize} --top-k {settings.top_k} --mode {settings.mode} --seed {settings.seed}"
