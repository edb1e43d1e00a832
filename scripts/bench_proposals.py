#!/usr/bin/env python
"""Benchmark proposal precomputation (1 vs 2 worker processes) and cache reads vs on-the-fly search.

Prints a table and writes ``bench_results/proposals.json``.

Images: the demo photos (``detr_ssl.datasets.demo_unlabeled_images()``, 32 real photos of up to 256 px),
repeated as mirrored / flipped / rotated copies up to ``--num-images``; every copy is a different file
content, so none is a cache hit of another.

What is measured, and how:

- ``precompute``: wall time of `detr_ssl.proposals.precompute` over all images into an empty cache, with
  1 worker (in-process) and with 2 worker processes (pool start-up included); best of ``--repeats`` runs,
  each into a fresh cache. Both runs must produce byte-identical caches (checked).
- ``per image``: what `ProposalProvider.boxes(path, image)` costs a data loader that has already decoded
  the image: a cache hit (hash the file, read and validate the entry) vs no cache (selective search on the
  decoded pixels). Median over images of the best of ``--repeats`` passes.

Example: ``python scripts/bench_proposals.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tyro
from PIL import Image

from detr_ssl.cli.common import run_main
from detr_ssl.datasets import demo_unlabeled_images, read_rgb_image
from detr_ssl.errors import ConfigError
from detr_ssl.proposals import ProposalCache, ProposalProvider, ProposalSettings, precompute
from detr_ssl.proposals.cache import ENTRY_SUFFIX

#: Distinct copies of a photo: identity, mirror, upside-down, rotated by 180 degrees.
_VARIANTS = (
    lambda a: a,
    lambda a: a[:, ::-1],
    lambda a: a[::-1],
    lambda a: a[::-1, ::-1],
)


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark proposal precomputation and cache reads on the demo photos."""

    num_images: int = 64
    """Images to precompute (demo photos plus transformed copies; at most 4 x the number of photos)."""
    repeats: int = 2
    """Runs per measurement; the best is reported."""
    output: Path = Path("bench_results/proposals.json")
    """Where the JSON results go."""


def make_images(folder: Path, count: int) -> list[Path]:
    photos = sorted(demo_unlabeled_images().iterdir())
    if count > len(photos) * len(_VARIANTS):
        raise ConfigError(f"--num-images must be at most {len(photos) * len(_VARIANTS)}, got {count}")
    paths = []
    for index in range(count):
        variant, photo = divmod(index, len(photos))
        pixels = np.ascontiguousarray(_VARIANTS[variant](np.asarray(read_rgb_image(photos[photo]))))
        path = folder / f"{index:03d}_{photos[photo].stem}.png"
        Image.fromarray(pixels).save(path, compress_level=1)
        paths.append(path)
    return paths


def time_precompute(paths: list[Path], root: Path, workers: int, repeats: int) -> tuple[float, dict[str, bytes]]:
    """Best wall time of precomputing ``paths`` into a fresh cache, and that cache's entries."""
    times = []
    for run in range(repeats):
        cache = ProposalCache(root / f"w{workers}-run{run}", ProposalSettings())
        start = time.perf_counter()
        summary = precompute(paths, cache, workers, progress=False)
        times.append(time.perf_counter() - start)
        assert summary.computed == len(paths), summary
    entries = {str(p.relative_to(cache.folder)): p.read_bytes() for p in cache.folder.rglob(f"*{ENTRY_SUFFIX}")}
    return min(times), entries


def time_per_image(provider: ProposalProvider, paths: list[Path], repeats: int) -> float:
    """Median over images of the best time of ``provider.boxes(path, decoded image)``."""
    images = [read_rgb_image(path) for path in paths]
    best = [float("inf")] * len(paths)
    for _ in range(repeats):
        for index, (path, image) in enumerate(zip(paths, images)):
            start = time.perf_counter()
            provider.boxes(path, image)
            best[index] = min(best[index], time.perf_counter() - start)
    return statistics.median(best)


def bench(cfg: BenchConfig) -> dict:
    settings = ProposalSettings()
    with tempfile.TemporaryDirectory(prefix="bench_proposals_") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        paths = make_images(root / "images", cfg.num_images)
        serial_s, serial_entries = time_precompute(paths, root / "caches", 1, cfg.repeats)
        parallel_s, parallel_entries = time_precompute(paths, root / "caches", 2, cfg.repeats)
        if parallel_entries != serial_entries:
            raise RuntimeError("2 workers wrote a different cache than 1 worker")
        hit_provider = ProposalProvider(settings, ProposalCache(root / "caches" / "w1-run0", settings),
                                        require_cache=True)
        hit_s = time_per_image(hit_provider, paths, max(cfg.repeats, 5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compute_s = time_per_image(ProposalProvider(settings), paths, cfg.repeats)
    results = {
        "settings": settings.fingerprint(),
        "num_images": len(paths),
        "precompute_1_worker": {"seconds": serial_s, "images_per_s": len(paths) / serial_s},
        "precompute_2_workers": {"seconds": parallel_s, "images_per_s": len(paths) / parallel_s},
        "speedup_2_vs_1_workers": serial_s / parallel_s,
        "per_image_cache_hit_ms": hit_s * 1e3,
        "per_image_on_the_fly_ms": compute_s * 1e3,
        "speedup_cache_hit_vs_on_the_fly": compute_s / hit_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "opencv": cv2.__version__},
    }
    print(f"{len(paths)} images, settings {settings.fingerprint()}")
    print(f"{'measurement':<34}{'value':>14}{'ratio':>10}")
    print(f"{'precompute, 1 worker':<34}{results['precompute_1_worker']['images_per_s']:>10.1f} im/s{'1.00x':>10}")
    print(f"{'precompute, 2 workers':<34}{results['precompute_2_workers']['images_per_s']:>10.1f} im/s"
          f"{results['speedup_2_vs_1_workers']:>9.2f}x")
    print(f"{'per image, on-the-fly search':<34}{compute_s * 1e3:>11.3f} ms{'1.00x':>10}")
    print(f"{'per image, cache hit':<34}{hit_s * 1e3:>11.3f} ms{results['speedup_cache_hit_vs_on_the_fly']:>9.0f}x")
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"written to {cfg.output}")
    return results


def main(argv: list[str]) -> int:
    bench(tyro.cli(BenchConfig, args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
