#!/usr/bin/env python
"""Benchmark one training step: our Deformable DETR vs HuggingFace transformers' DeformableDetrForObjectDetection.

Prints a table and writes ``--output`` (``bench_results/train_step.json``; ``docs/bench/train_step.json`` is
the committed one behind the README). Needs the ``bench`` extra (``pip install -e ".[bench]"``); nothing is
downloaded.

Both detectors have the same configuration and the same weights: transformers' model is built with random
weights (``detr_ssl.models.transformers_interop``), saved, and read into ours through our
transformers-checkpoint reader; their detections on the benchmark batch must agree (max abs difference
under 1e-4, eval mode) before anything is timed. They also train the same parameters: the backbone's stem
and first stage stay frozen in both, as in the paper.

A step is what a training loop does per batch: forward, the set loss (Hungarian matching; focal, L1 and
GIoU terms on the final and every auxiliary decoder layer), backward, gradient clipping at 0.1 and an AdamW
step. Each library computes its own loss, with transformers' weights (class 1, L1 5, GIoU 2) on both sides,
and the two losses must agree too (1e-4 relative). Sizes:

- ``tiny``: our tiny preset (ResNet-18, 2+2 layers, 64-d, 30 queries) with a frozen-BN backbone, the only
  backbone normalisation transformers has; 4 images of 128 x 160, as the demo trains it;
- ``r50``: the published architecture (ResNet-50, 6+6 layers, 256-d, 300 queries, 4 levels, dropout 0.1 at
  the original code's places, which transformers also gets: its attention and activation dropouts are set
  to 0.1 too); 2 images (the paper's batch per GPU) of 384 x 512 (the paper's are up to 800 x 1333).

Time: median wall time per step over ``--repeats`` steps after ``--warmup``, the two models interleaved step
by step (``detr_ssl.benchmarking.time_interleaved``). Peak memory: the extra resident memory of two steps
above the built model and batch (activations, gradients, optimizer state, temporaries), each model in a
fresh process (``detr_ssl.benchmarking.peak_rss_in_fresh_process``; Linux only).

Example: ``python scripts/bench_train_step.py`` (minutes on 2 cores, almost all of it R50; ``--sizes tiny``
is quick).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent

NAME = "train_step"
#: size: default (batch, image height, image width): the demo preset's batch; the paper's batch per GPU.
SIZES = {"tiny": (4, 128, 160), "r50": (2, 384, 512)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=5, warmup=1, memory=True)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: tiny 4, r50 2)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image height and width (default: tiny 128 160, r50 384 512)")
    return parser.parse_args(argv)


def _ratio(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"**{value:.2f}x**" if bold else f"{value:.2f}x"


def readme_table(payload: dict[str, Any]) -> str:
    """Per size: both step times, the speed-up, both peak memories and their ratio, the outputs' largest
    difference and the background load."""
    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    rows = []
    for r in payload["results"]:
        rows.append([r["size"], f"{r['batch']} x {r['image'][0]}x{r['image'][1]}", f"{r['median_ms']['ours']:.0f}",
                     f"{r['median_ms']['transformers']:.0f}", _ratio(r["speedup_vs_transformers"], bold=True),
                     mb(r["peak_mb"]["ours"]), mb(r["peak_mb"]["transformers"]),
                     _ratio(r["memory_vs_transformers"], bold=True), f"{r['max_output_difference']:.1e}",
                     percent(payload["background_load"][r["size"]])])
    return markdown_table(["size", "batch", "ours ms/step", "transformers ms/step", "speed-up", "ours peak MiB",
                           "transformers peak MiB", "memory ratio", "output diff", "bg load"], rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    reached = "; ".join(f"{r['size']}: {_ratio(r['speedup_vs_transformers'])}, "
                        f"{_ratio(r['memory_vs_transformers'])} memory" for r in payload["results"])
    return (f"transformers {payload['versions'].get('transformers')} `DeformableDetrForObjectDetection`",
            "tiny >= 1.2x per step; R50 >= 1.4x with <= 0.75x peak memory", reached)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.cli.bench_train_step import bench_size

    results = []
    for size in args.sizes:
        batch, height, width = SIZES[size]
        results.append(bench_size(size, args.batch or batch, *(args.image_size or (height, width)), args, run))
    print(readme_table(run.write(results, libraries=("transformers",))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
