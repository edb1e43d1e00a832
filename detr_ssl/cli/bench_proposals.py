"""The measurement code of ``scripts/bench_proposals.py`` (what it measures, and how, is in its docstring):
proposal precomputation with 1 and 2 worker processes, and a cache hit against on-the-fly search."""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from detr_ssl.bench_cli import BenchRun, background_load, cpu_times, own_cpu_seconds
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


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` PNGs in ``folder``: the demo photos, then their mirrored / flipped / rotated copies."""
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
    fresh cache, every run's wall time, and that cache's entries."""
    runs = []
    for run in range(repeats):
        cache = ProposalCache(root / f"w{workers}-run{run}", ProposalSettings())
        cpu_before = own_cpu_seconds()
        start = time.perf_counter()
        summary = precompute(paths, cache, workers, progress=False)
        runs.append({"seconds": time.perf_counter() - start, "cpu_seconds": own_cpu_seconds() - cpu_before})
        if summary.computed != len(paths):
            raise RuntimeError(f"precompute did not compute every image: {summary}")
    entries = {str(p.relative_to(cache.folder)): p.read_bytes() for p in cache.folder.rglob(f"*{ENTRY_SUFFIX}")}
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "images_per_s": len(paths) / best["seconds"], "all_seconds": [r["seconds"] for r in runs]}, entries


def best_ms_per_image(provider: ProposalProvider, paths: list[Path], repeats: int) -> list[float]:
    """Per image, the best time in ms of ``provider.boxes(path, decoded image)`` over ``repeats`` passes."""
    images = [read_rgb_image(path) for path in paths]
    best = [float("inf")] * len(paths)
    for _ in range(repeats):
        for index, (path, image) in enumerate(zip(paths, images)):
            start = time.perf_counter()
            provider.boxes(path, image)
            best[index] = min(best[index], (time.perf_counter() - start) * 1e3)
    return best


def bench(num_images: int, repeats: int, run: BenchRun) -> dict[str, object]:
    """Precomputation with 1 and 2 workers, then per-image cache hits and on-the-fly searches; every run's
    time is recorded in ``run``."""
    settings = ProposalSettings()
    with tempfile.TemporaryDirectory(prefix="bench_proposals_") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        paths = make_images(root / "images", num_images)
        before = cpu_times()
        serial, serial_entries = time_precompute(paths, root / "caches", 1, repeats)
        parallel, parallel_entries = time_precompute(paths, root / "caches", 2, repeats)
        run.record("precompute", {"1 worker": [s * 1e3 for s in serial["all_seconds"]],
                                  "2 workers": [s * 1e3 for s in parallel["all_seconds"]]},
                   background_load(before, cpu_times()))
        if parallel_entries != serial_entries:
            raise RuntimeError("2 workers wrote a different cache than 1 worker")
        before = cpu_times()
        hit_provider = ProposalProvider(settings, ProposalCache(root / "caches" / "w1-run0", settings),
                                        require_cache=True)
        hit_ms = best_ms_per_image(hit_provider, paths, max(repeats, 5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compute_ms = best_ms_per_image(ProposalProvider(settings), paths, repeats)
        run.record("per image", {"cache hit": hit_ms, "on the fly": compute_ms}, background_load(before, cpu_times()))
    hit, compute = statistics.median(hit_ms), statistics.median(compute_ms)
    return {
        "settings": settings.fingerprint(),
        "num_images": len(paths),
        "precompute_1_worker": serial,
        "precompute_2_workers": parallel,
        "speedup_2_vs_1_workers": serial["seconds"] / parallel["seconds"],
        "per_image_cache_hit_ms": hit,
        "per_image_on_the_fly_ms": compute,
        "speedup_cache_hit_vs_on_the_fly": compute / hit,
    }
