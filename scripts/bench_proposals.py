#!/usr/bin/env python
"""Benchmark proposal precomputation (1 vs 2 worker processes) and cache reads vs on-the-fly search.

Prints a table and writes ``bench_results/proposals.json``.

Images: the demo photos (``detr_ssl.datasets.demo_unlabeled_images()``, 32 real photos of up to 256 px),
repeated as mirrored / flipped / rotated copies up to ``--num-images``; every copy is a different file
content, so none is a cache hit of another.

What is measured, and how:

- ``precompute``: wall time of `detr_ssl.proposals.precompute` over all images into an empty cache, with
  1 worker (in-process) and with 2 worker processes (pool start-up included); best of ``--repeats`` runs,
  each into a fresh cache. Both must produce byte-identical caches (checked). ``CPU busy`` is the CPU time
  of the run (workers included) over its wall time: about 2 when two workers really had two cores; the
  1-minute load average before the run is recorded too, since a shared machine caps the speed-up.
- ``per image``: what `ProposalProvider.boxes(path, image)` costs a data loader that has already decoded
  the image: a cache hit (hash the file, read and validate the entry) vs no cache (selective search on the
  decoded pixels). Median over images of the best of ``--repeats`` passes.

Example: ``python scripts/bench_proposals.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import platform
import resource
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
    repeats: int = 3
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


def time_precompute(paths: list[Path], root: Path, workers: int, repeats: int) -> tuple[dict, dict[str, bytes]]:
    """Best wall time (and the CPU seconds of that run, workers included) of precomputing ``paths`` into a
    fresh cache, and that cache's entries."""
    runs = []
    for run in range(repeats):
        cache = ProposalCache(root / f"w{workers}-run{run}", ProposalSettings())
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        summary = precompute(paths, cache, workers, progress=False)
        runs.append({"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds() - cpu_before})
        if summary.computed != len(paths):
            raise RuntimeError(f"precompute did not compute every image: {summary}")
    entries = {str(p.relative_to(cache.folder)): p.read_bytes() for p in cache.folder.rglob(f"*{ENTRY_SUFFIX}")}
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "images_per_s": len(paths) / best["seconds"], "all_seconds": [r["seconds"] for r in runs]}, entries


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_proposals_") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        paths = make_images(root / "images", cfg.num_images)
        serial, serial_entries = time_precompute(paths, root / "caches", 1, cfg.repeats)
        parallel, parallel_entries = time_precompute(paths, root / "caches", 2, cfg.repeats)
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
        "precompute_1_worker": serial,
        "precompute_2_workers": parallel,
        "speedup_2_vs_1_workers": serial["seconds"] / parallel["seconds"],
        "per_image_cache_hit_ms": hit_s * 1e3,
        "per_image_on_the_fly_ms": compute_s * 1e3,
        "speedup_cache_hit_vs_on_the_fly": compute_s / hit_s,
        "machine": {"cpus": os.cpu_count(), "load_average_1min_before": load_before,
                    "platform": platform.platform(), "python": platform.python_version(), "opencv": cv2.__version__},
    }
    print(f"{len(paths)} images, settings {settings.fingerprint()}")
    print(f"{'measurement':<34}{'value':>14}{'ratio':>10}{'CPU busy':>10}")
    for label, run, ratio in (("precompute, 1 worker", serial, 1.0),
                              ("precompute, 2 workers", parallel, results["speedup_2_vs_1_workers"])):
        busy = run["cpu_seconds"] / run["seconds"]
        print(f"{label:<34}{run['images_per_s']:>10.1f} im/s{ratio:>9.2f}x{busy:>9.2f}x")
    print(f"{'per image, on-the-fly search':<34}{compute_s * 1e3:>11.3f} ms{'1.00x':>10}")
    print(f"{'per image, cache hit':<34}{hit_s * 1e3:>11.3f} ms{results['speedup_cache_hit_vs_on_the_fly']:>9.0f}x")
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if load_before > 0.5:
        print(f"note: the 1-minute load average was {load_before:.1f} before the run; other processes shared "
              f"the {os.cpu_count()} CPU(s), so the worker speed-up is a lower bound")
    print(f"written to {cfg.output}")
    return results


def main(argv: list[str]) -> int:
    bench(tyro.cli(BenchConfig, args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
