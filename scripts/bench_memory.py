#!/usr/bin/env python
"""Benchmark encoder activation checkpointing: peak memory and time of one training step vs batch size.

Prints a markdown table and writes ``--output`` (default ``bench_results/memory.json``).

Set-up: for each ``--model-size`` preset and ``--batch-size``, the detector twice from the same weights,
without (the peer) and with ``encoder_checkpointing`` (``ModelConfig.encoder_checkpointing``: each
encoder layer's activations are recomputed in the backward pass instead of kept). The batch is synthetic
(``scripts/bench_compile.py``'s: random images of ``--image-size`` squared, no padding, 3 random boxes each).
The step is forward + set loss (Hungarian matching, focal + L1 + GIoU on every decoder layer) + backward,
gradients cleared before each step; no optimizer (its state does not depend on the batch size).

What is measured, and how:

- ``peak MiB``: the extra resident memory of one step at its worst moment (activations and tensors saved
  for backward, gradients, temporaries), above the built model and batch, measured in a fresh process
  per (model, batch, checkpointing) by ``detr_ssl.benchmarking.peak_rss_in_fresh_process`` after one
  untimed warm-up step there (Linux only; elsewhere the columns read n/a).
- ``ms``: median wall time per step over ``--repeats`` steps after one warm-up, the two models interleaved
  step by step in this process (``detr_ssl.benchmarking.time_interleaved``).
- Ratios are checkpointed / plain: below 1 for memory is the saving, above 1 for time the cost (about
  one more encoder forward). ``bg load`` is the share of the machine's CPU time other processes used while
  the steps were timed.

The encoder's share of a step sets the saving: large for the R50 model's 6-layer, 256-d encoder, small
for the tiny model's 2-layer, 64-d one (README, Performance).

Example: ``python scripts/bench_memory.py --threads 2`` (minutes on 2 cores);
``--model-size tiny r50`` adds the ResNet-50 model (a few more).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent, positive_int

NAME = "memory"
MODEL_SIZES = ("tiny", "r50")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=3, memory=True)
    parser.add_argument("--model-size", nargs="+", choices=MODEL_SIZES, default=["tiny"],
                        help="model presets to run (default: tiny)")
    parser.add_argument("--batch-size", nargs="+", type=positive_int, default=[1, 2, 4],
                        help="batch sizes (default: 1 2 4)")
    parser.add_argument("--image-size", type=positive_int, default=320, help="image side in pixels (default 320)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """Per model and batch: both peaks and their ratio, both step times and their ratio, bg load."""
    def number(value: object, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    headers = ["model", "batch", "image", "peak MiB plain", "peak MiB ckpt", "memory ratio", "ms plain",
               "ms ckpt", "time ratio", "bg load"]
    rows = [[r["model_size"], r["batch_size"], r["image_size"], number(r["plain_peak_mib"], ".0f"),
             number(r["checkpointed_peak_mib"], ".0f"), number(r["memory_ratio"], ".2f"),
             f"{r['plain_ms']:.0f}", f"{r['checkpointed_ms']:.0f}", f"{r['time_ratio']:.2f}",
             percent(payload["background_load"][f"{r['model_size']} batch {r['batch_size']}"])]
            for r in payload["results"]]
    return markdown_table(headers, rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    parts = []
    for size in dict.fromkeys(r["model_size"] for r in payload["results"]):
        rows = [r for r in payload["results"] if r["model_size"] == size]
        memory = [r["memory_ratio"] for r in rows if r["memory_ratio"] is not None]
        times = [r["time_ratio"] for r in rows]
        spread = f"{min(memory):.2f}-{max(memory):.2f}x peak memory for " if memory else ""
        parts.append(f"{size}: {spread}{min(times):.2f}-{max(times):.2f}x time")
    return "no activation checkpointing", "report", "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.cli.bench_memory import bench

    results = [bench(size, batch, args, run) for size in args.model_size for batch in args.batch_size]
    print(readme_table(run.write(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
