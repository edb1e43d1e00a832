"""Fill a proposal cache for many images with a pool of worker processes; resumable after a kill.

Each image is handled on its own by a worker (hash the file, skip it if the cache already holds a valid
entry, else decode, search and write the entry atomically), so a killed run loses at most the images in
flight, and rerunning it computes only what is missing. An image that cannot be read or searched is
reported and skipped; it does not stop the run.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm.auto import tqdm

from detr_ssl.datasets.image_io import read_rgb_image
from detr_ssl.errors import DataError
from detr_ssl.proposals.cache import ProposalCache, image_digest
from detr_ssl.proposals.selective_search import selective_search_boxes

__all__ = ["PrecomputeSummary", "precompute"]

_Status = Literal["computed", "cached", "failed"]
#: Upper bound on images per task sent to a worker: large enough to amortise the messaging, small enough
#: that the workers finish together and the progress bar moves.
_MAX_CHUNK = 16


@dataclass
class PrecomputeSummary:
    """What a `precompute` run did: images computed, found already cached, and failed (path, reason)."""

    computed: int = 0
    cached: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.computed + self.cached + len(self.failed)

    def __str__(self) -> str:
        lines = [
            f"{self.total} image(s): {self.computed} computed, {self.cached} already cached, "
            f"{len(self.failed)} failed"
        ]
        lines += [f"  failed: {reason}" for _, reason in self.failed]
        return "\n".join(lines)


def precompute(
    image_paths: Sequence[str | Path], cache: ProposalCache, workers: int = 1, *, progress: bool = True
) -> PrecomputeSummary:
    """Make sure ``cache`` holds a valid entry for every image; compute the missing ones.

    Args:
        image_paths: the image files.
        cache: where entries go; its settings say how proposals are computed.
        workers: processes computing in parallel; 1 computes in this process. Workers come from the
            platform's default start method, and everything they receive is importable and picklable, so
            ``spawn`` works too (call this under ``if __name__ == "__main__":`` there).
        progress: show a progress bar.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    paths = [Path(p) for p in image_paths]
    job = functools.partial(_precompute_one, cache)
    if workers == 1 or len(paths) <= 1:
        return _tally(map(job, paths), len(paths), progress)
    processes = min(workers, len(paths))
    chunk = max(1, min(_MAX_CHUNK, len(paths) // (processes * 4)))
    # A forked child inherits OpenCV's thread-pool state but not its threads, and changing the thread count
    # there can deadlock (pthread_cond_destroy on a condition variable that a vanished thread waited on). So
    # the workers start while this process runs OpenCV single-threaded: forked ones inherit one thread and
    # never reconfigure; spawned ones start fresh and set it themselves (`_init_worker`).
    parent_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with multiprocessing.get_context().Pool(processes, initializer=_init_worker) as pool:
            return _tally(pool.imap_unordered(job, paths, chunksize=chunk), len(paths), progress)
    finally:
        cv2.setNumThreads(parent_threads)


def _tally(outcomes: Iterator[tuple[Path, _Status, str]], total: int, progress: bool) -> PrecomputeSummary:
    """Count outcomes as they arrive. The progress bar (and its monitor thread) starts only now, after any
    worker processes were forked."""
    summary = PrecomputeSummary()
    with tqdm(total=total, unit="img", desc="proposals", disable=not progress, dynamic_ncols=True) as bar:
        for path, status, reason in outcomes:
            if status == "computed":
                summary.computed += 1
            elif status == "cached":
                summary.cached += 1
            else:
                summary.failed.append((path, reason))
            bar.update()
    summary.failed.sort()
    return summary


def _init_worker() -> None:
    """Workers already run in parallel: OpenCV's own threads would only oversubscribe the CPU.

    A forked worker already runs one thread (see `precompute`) and must leave the setting alone.
    """
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _precompute_one(cache: ProposalCache, path: Path) -> tuple[Path, _Status, str]:
    """Handle one image: ``(path, status, reason for a failure or "")``."""
    try:
        digest = image_digest(path)
        if cache.contains(path, digest=digest):
            return path, "cached", ""
        image = np.asarray(read_rgb_image(path))
        cache.put(path, selective_search_boxes(image, cache.settings), digest=digest)
    except DataError as error:
        return path, "failed", str(error)
    except cv2.error as error:
        detail = " ".join(str(error).split())
        return path, "failed", f"{path}: selective search failed ({detail})"
    return path, "computed", ""
