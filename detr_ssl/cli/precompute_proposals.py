"""``scripts/precompute_proposals.py``: fill the proposal cache for an image folder or a COCO JSON.

Selective search (OpenCV) and the datasets (torch) are imported inside :func:`main`, after parsing
(start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tyro

from detr_ssl.cli.common import run_main
from detr_ssl.errors import ConfigError, DataError
from detr_ssl.tasks.options.proposals import ProposalMode

__all__ = ["PrecomputeConfig", "cli", "main"]


@dataclass(frozen=True)
class PrecomputeConfig:
    """Compute the selective-search box proposals DetReg and Pair DETR train against, once per image, into an
    on-disk cache (format: detr_ssl/proposals/cache.py). Resumable: images with a valid entry are skipped, so
    rerun the same command after an interruption. Unreadable images are listed and skipped. Prints a summary;
    exit status 0 when every image has proposals, 1 when some failed, 2 for bad arguments."""

    images: Path
    """Image folder (searched recursively) or a COCO-format JSON whose 'images' are used."""
    cache: Path
    """Cache folder (created if missing); entries go to CACHE/<settings fingerprint>/. Pretraining reads it."""
    image_dir: Path | None = None
    """With a COCO JSON: the folder its file_name entries are relative to (default: the JSON's folder)."""
    workers: int = os.cpu_count() or 1
    """Worker processes computing in parallel (the default is the number of CPU cores)."""
    resize: int = 128
    """Images are resized to RESIZE x RESIZE pixels before the search (DetReg: 128)."""
    top_k: int = 30
    """Boxes kept per image, in selective search's order (DetReg: 30)."""
    mode: ProposalMode = "fast"
    """OpenCV selective-search strategy set (DetReg: fast)."""
    seed: int = 0
    """Seed of the random region ranking inside OpenCV's selective search."""
    progress: bool = True
    """Show a progress bar."""


def main(argv: list[str]) -> int:
    cfg = tyro.cli(PrecomputeConfig, args=argv)
    if cfg.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.image_dir is not None and not cfg.images.is_file():
        raise ConfigError("--image-dir applies only when --images is a COCO JSON file")
    if cfg.cache.exists() and not cfg.cache.is_dir():
        raise DataError(f"{cfg.cache}: --cache must be a folder, this is a file")
    from detr_ssl.datasets import ImageFolderDataset
    from detr_ssl.proposals.cache import ProposalCache
    from detr_ssl.proposals.precompute import precompute
    from detr_ssl.proposals.selective_search import ProposalSettings

    settings = ProposalSettings(resize=cfg.resize, top_k=cfg.top_k, mode=cfg.mode, seed=cfg.seed)
    images = ImageFolderDataset(cfg.images, image_dir=cfg.image_dir)
    cache = ProposalCache(cfg.cache, settings)
    print(f"{len(images)} image(s) from {cfg.images} -> {cache.folder} ({cfg.workers} worker(s))", flush=True)
    summary = precompute(images.image_paths, cache, cfg.workers, progress=cfg.progress)
    print(summary)
    return 1 if summary.failed else 0


def cli() -> int:
    return run_main(main)
