#!/usr/bin/env python
"""Benchmark encoder activation checkpointing: peak memory and time of one training step vs batch size.

Prints a markdown table and writes ``bench_results/memory.json``.

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

Measured on 2 cores (320 x 320 images, batch 1 / 2 / 4): r50 peaks at 694 / 1332 / 2453 MiB without and
404 / 788 / 1479 MiB with checkpointing (0.58-0.60x) for 15-20% more time per step; the tiny model's
2-layer, 64-d encoder is a small part of its step, so there it saves 0-11% for 7-12% more time.

Example: ``python scripts/bench_memory.py --threads 2`` (about two minutes on 2 cores);
``--model-size tiny r50`` adds the ResNet-50 model (a few more).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from detr_ssl.benchmarking import environment, markdown_table, peak_rss_in_fresh_process, time_interleaved, write_json
from detr_ssl.models.config import MODEL_PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import build_detector, make_batch, make_train_step, positive_int  # noqa: E402

VARIANTS = {"plain": False, "checkpointed": True}


def step_setup(model_size: str, batch_size: int, image_size: int, checkpointing: bool,
               seed: int) -> Callable[[], float]:
    """One training step (forward + loss + backward) of a freshly built model, warmed up once; its gradients
    are freed again, so that a measured step allocates them."""
    model, criterion = build_detector(model_size, seed, encoder_checkpointing=checkpointing)
    step = make_train_step(model, criterion, make_batch(batch_size, image_size, seed), optimizer=None)
    step()
    model.zero_grad(set_to_none=True)
    return step


def bench(model_size: str, batch_size: int, args: argparse.Namespace) -> dict[str, object]:
    """Peak memory and step time of the plain and the checkpointed model for one (size, batch)."""
    steps = {name: step_setup(model_size, batch_size, args.image_size, flag, args.seed)
             for name, flag in VARIANTS.items()}
    times, load = time_interleaved(steps, warmup=0, repeats=args.repeats)  # step_setup warmed them up
    result: dict[str, object] = {"model_size": model_size, "batch_size": batch_size, "image_size": args.image_size,
                                 "background_load": load}
    for name, flag in VARIANTS.items():
        result[f"{name}_ms"] = statistics.median(times[name])
        result[f"{name}_times_ms"] = times[name]
        result[f"{name}_peak_mib"] = None if args.no_memory else peak_rss_in_fresh_process(
            step_setup, model_size, batch_size, args.image_size, flag, args.seed, threads=torch.get_num_threads())
    result["time_ratio"] = result["checkpointed_ms"] / result["plain_ms"]
    plain, checkpointed = result["plain_peak_mib"], result["checkpointed_peak_mib"]
    result["memory_ratio"] = checkpointed / plain if plain and checkpointed is not None else None
    print(f"  done {model_size} batch {batch_size}", file=sys.stderr, flush=True)
    return result


def format_table(results: list[dict[str, object]]) -> str:
    def number(value: object, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    headers = ["model", "batch", "image", "peak MiB plain", "peak MiB ckpt", "memory ratio", "ms plain",
               "ms ckpt", "time ratio", "bg load"]
    rows = [[r["model_size"], r["batch_size"], r["image_size"], number(r["plain_peak_mib"], ".0f"),
             number(r["checkpointed_peak_mib"], ".0f"), number(r["memory_ratio"], ".2f"),
             f"{r['plain_ms']:.0f}", f"{r['checkpointed_ms']:.0f}", f"{r['time_ratio']:.2f}",
             number(r["background_load"], ".0%")] for r in results]
    return markdown_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="What is measured, and how, is described in the module docstring.")
    parser.add_argument("--model-size", nargs="+", choices=sorted(MODEL_PRESETS), default=["tiny"],
                        help="model presets to run (default: tiny)")
    parser.add_argument("--batch-size", nargs="+", type=positive_int, default=[1, 2, 4],
                        help="batch sizes (default: 1 2 4)")
    parser.add_argument("--image-size", type=positive_int, default=320, help="image side in pixels (default 320)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed steps per variant (default 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads here and in the memory processes (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (default 0)")
    parser.add_argument("--output", type=Path, default=Path("bench_results/memory.json"),
                        help="JSON file to write (default bench_results/memory.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = [bench(size, batch, args) for size in args.model_size for batch in args.batch_size]
    print(format_table(results))
    settings = {"image_size": args.image_size, "repeats": args.repeats, "seed": args.seed}
    write_json(args.output, {"environment": environment(), "settings": settings, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
