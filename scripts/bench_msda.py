"""Benchmark multi-scale deformable attention: our ``pytorch`` backend vs the per-level grid_sample reference.

Prints a table and writes ``--output`` (default ``bench_results/msda.json``). On CUDA, mmcv's kernel is added when it imports.

Shapes are Deformable DETR's: batch 2, 8 heads x 32 channels, 4 levels, 4 points per head and level.
``decoder``: 300 queries into levels 64x64..8x8 (5,440 pixels). ``encoder``: every pixel of those levels
is a query (5,440). ``--large`` adds ``encoder-large``: levels 128x128..16x16 (21,760 queries). Sampling
locations look like a trained layer's: each query's reference point (a random point for the decoder, the
query's own pixel centre for the encoder) plus offsets of about two pixels of each level, so a few
percent of the taps fall outside the maps.

What is measured, and how:

- Time: median wall time over ``--repeats`` runs after ``--warmup`` runs; ``fwd`` is the forward call,
  ``fwd+bwd`` also back-propagates a fixed random output gradient to value, locations and weights. The
  methods are interleaved run by run, so background load on a shared machine hits all of them alike.
- Peak memory on CPU: the extra resident memory one call needs at its worst moment, measured in a fresh
  subprocess per (case, method, mode) by :func:`detr_ssl.benchmarking.peak_rss_in_fresh_process`
  (Linux only; elsewhere the column reads n/a).
- Background load: the share of the machine's CPU time used by *other* processes while a case was timed
  (from ``/proc/stat`` minus this process's CPU time). On a shared machine many small parallel ops suffer
  more than a few big ones (each waits for a descheduled thread), so read ratios taken under load with care.
- Peak memory on CUDA: ``torch.cuda.max_memory_allocated`` during the call minus what was allocated before.

Example: ``python scripts/bench_msda.py --threads 2`` (a minute or two on 2 cores; ``--large``
more).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent

NAME = "msda"
#: name: (level shapes, queries; None = every pixel is a query)
CASES: dict[str, tuple[tuple[tuple[int, int], ...], int | None]] = {
    "decoder": (((64, 64), (32, 32), (16, 16), (8, 8)), 300),
    "encoder": (((64, 64), (32, 32), (16, 16), (8, 8)), None),
    "encoder-large": (((128, 128), (64, 64), (32, 32), (16, 16)), None),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=7, warmup=2, memory=True, device=True)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=["decoder", "encoder"],
                        help="which shapes to run (default: decoder encoder)")
    parser.add_argument("--large", action="store_true", help="also run encoder-large (levels 128..16, 21,760 queries)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """Per case, mode and method: median time, speed-up and peak memory against the reference, bg load."""
    def number(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [[r["case"], f"{r['queries']:,}", r["mode"], r["method"], f"{r['median_ms']:.1f}",
             f"{r['speedup_vs_reference']:.2f}x", number(r["peak_mb"], ".0f"), number(r["memory_vs_reference"], ".2f"),
             percent(payload["background_load"][f"{r['case']} {r['mode']}"])] for r in payload["results"]["rows"]]
    return markdown_table(["case", "queries", "mode", "method", "median ms", "speed-up", "peak MiB", "memory ratio",
                           "bg load"], rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    reached = ", ".join(f"{r['method']} {r['speedup_vs_reference']:.2f}x {r['case']} {r['mode']}"
                        for r in payload["results"]["rows"] if r["method"] != "reference" and r["mode"] == "fwd+bwd")
    return "per-level `grid_sample` reference", ">= 1.5x", reached


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    import torch

    from detr_ssl.cli.bench_msda import BATCH, CHANNELS, HEADS, OFFSET_PIXELS, POINTS
    from detr_ssl.cli.bench_msda import run as measure
    from detr_ssl.models.msda.mmcv_backend import mmcv_unavailable_reason

    names = args.cases + (["encoder-large"] if args.large and "encoder-large" not in args.cases else [])
    results = measure({name: CASES[name] for name in names}, torch.device(args.device), args.warmup, args.repeats,
                      not args.no_memory, args.seed, run)
    payload = run.write({"mmcv": mmcv_unavailable_reason() or "available", "cases": {n: CASES[n] for n in names},
                         "shapes": {"batch": BATCH, "heads": HEADS, "channels": CHANNELS, "points": POINTS,
                                    "offset_pixels": OFFSET_PIXELS},
                         "rows": [asdict(r) for r in results]}, device=args.device)
    print(readme_table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
