#!/usr/bin/env python
"""Benchmark proposal precomputation (1 vs 2 worker processes) and cache reads vs on-the-fly search.

Prints a table and writes ``--output`` (default ``bench_results/proposals.json``).

Images: the demo photos (``detr_ssl.datasets.demo_unlabeled_images()``, 32 real photos of up to 256 px),
repeated as mirrored / flipped / rotated copies up to ``--num-images``; every copy is a different file
content, so none is a cache hit of another.

What is measured, and how:

- ``precompute``: wall time of `detr_ssl.proposals.precompute` over all images into an empty cache, with
  1 worker (in-process) and with 2 worker processes (pool start-up included); best of ``--repeats`` runs,
  each into a fresh cache. Both must produce byte-identical caches (checked). ``CPU busy`` is the CPU time
  of the run (workers included) over its wall time: about 2 when two workers really had two cores; a
  shared machine caps the speed-up, so the background load is recorded too.
- ``per image``: what `ProposalProvider.boxes(path, image)` costs a data loader that has already decoded
  the image: a cache hit (hash the file, read and validate the entry) vs no cache (selective search on the
  decoded pixels). Median over images of the best of ``--repeats`` passes.

Example: ``python scripts/bench_proposals.py`` (a minute or two on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent, positive_int
from detr_ssl.errors import DetrSslError

NAME = "proposals"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=3, seed=None, threads=False)
    parser.add_argument("--num-images", type=positive_int, default=64,
                        help="images to precompute: the demo photos plus transformed copies, at most 4 x the "
                             "number of photos (default 64)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """Precomputation with 1 and 2 workers (images/s, ratio, CPU busy), then the per-image cost of an
    on-the-fly search and of a cache hit."""
    r, load = payload["results"], payload["background_load"]
    rows = []
    for label, run, ratio in (("precompute, 1 worker", r["precompute_1_worker"], 1.0),
                              ("precompute, 2 workers", r["precompute_2_workers"], r["speedup_2_vs_1_workers"])):
        rows.append([label, f"{run['images_per_s']:.1f} images/s", f"{ratio:.2f}x",
                     f"{run['cpu_seconds'] / run['seconds']:.2f}", percent(load["precompute"])])
    rows.append(["per image, on-the-fly search", f"{r['per_image_on_the_fly_ms']:.3f} ms", "1.00x", "-",
                 percent(load["per image"])])
    rows.append(["per image, cache hit", f"{r['per_image_cache_hit_ms']:.3f} ms",
                 f"{r['speedup_cache_hit_vs_on_the_fly']:.0f}x", "-", percent(load["per image"])])
    return (f"{r['num_images']} images, settings {r['settings']}\n\n"
            + markdown_table(["measurement", "value", "ratio", "CPU busy", "bg load"], rows))


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    r = payload["results"]
    return ("1 worker; an on-the-fly selective search", "report",
            f"2 workers {r['speedup_2_vs_1_workers']:.2f}x; a cache hit {r['speedup_cache_hit_vs_on_the_fly']:.0f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.cli.bench_proposals import bench

    try:
        results = bench(args.num_images, args.repeats, run)
    except DetrSslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(readme_table(run.write(results, libraries=("opencv-contrib-python-headless",))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
