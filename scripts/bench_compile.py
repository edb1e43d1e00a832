#!/usr/bin/env python
"""Benchmark ``--compile``: one training step of Deformable DETR, eager vs ``torch.compile``.

Prints a markdown table and writes ``--output`` (default ``bench_results/compile.json``).

Set-up: the detector of each ``--model-size`` preset (``tiny`` by default; ``r50`` is the published
architecture, here on small images), built twice from the same weights, one copy compiled in place as
``--compile`` does (``nn.Module.compile``, ``--backend`` / ``--mode`` passed to ``torch.compile``; how the
deformable attention op is traced: ``detr_ssl.models.msda.dispatch``). The batch is synthetic and fixed:
``--batch-size`` random images of ``--image-size`` squared, no padding, 3 random boxes each over 80 classes. A step is what the training loop does per batch: forward, the set loss (Hungarian
matching, focal + L1 + GIoU on every decoder layer), backward, gradient clipping at 0.1 and an AdamW step.

What is measured, and how:

- ``compile s``: the time the first ``--compile-steps`` compiled steps took beyond as many eager steps
  (Dynamo tracing, AOT autograd and Inductor code generation of forward and backward graphs, including any
  recompilation those steps trigger). One eager step runs first so that one-time start-up costs (thread
  pools, oneDNN primitives) are not counted as compilation.
- ``eager ms`` / ``compiled ms``: median wall time per step over ``--repeats`` steps after those and
  ``--warmup`` more, the two models interleaved step by step (``detr_ssl.benchmarking.time_interleaved``),
  so background load on a shared machine hits both alike; ``speed-up`` = eager / compiled.
- ``first-step loss diff``: |compiled - eager| loss of the very first step (same weights, same batch): the
  compiled model must compute the same function. Up to rounding (~1e-6) without dropout, as in the tiny
  preset; with dropout (r50: 0.1) Inductor draws its own random numbers, so the dropout masks and the loss
  differ visibly, except under ``torch._inductor.config.fallback_random = True``.
- ``bg load``: the share of the machine's CPU time other processes used while the steps were timed.

Every step uses a single image size, so the compiled model compiles once; real training with multi-scale
augmentation sees many sizes and recompiles (dynamic shapes after the first recompilation), which costs
more compile time than measured here.

Whether the compiled step is faster depends on the machine: a step is mostly the backbone's convolutions,
which Inductor hands to the same oneDNN kernels on CPU, so ``--compile`` stays opt-in unless this measures
a gain (README, Performance).

Example: ``python scripts/bench_compile.py --threads 2`` (minutes on 2 cores, almost all of it
compilation); ``--model-size tiny r50`` adds the ResNet-50 model; ``--backend eager`` measures Dynamo's
tracing alone (no code generation) in seconds.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent, positive_int

NAME = "compile"
MODEL_SIZES = ("tiny", "r50")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=5, warmup=1)
    parser.add_argument("--model-size", nargs="+", choices=MODEL_SIZES, default=["tiny"],
                        help="model presets to run (default: tiny)")
    parser.add_argument("--image-size", type=positive_int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="images per step (default 2)")
    parser.add_argument("--compile-steps", type=positive_int, default=2,
                        help="first compiled steps counted as compilation (default 2)")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile backend (default inductor; 'eager' traces with Dynamo only)")
    parser.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune (default: none)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """Per model: compile time, both step times, the speed-up, the first-step loss difference, bg load."""
    headers = ["model", "batch", "compile s", "eager ms", "compiled ms", "speed-up", "first-step loss diff",
               "bg load"]
    rows = [[r["model_size"], f"{r['batch_size']} x {r['image_size']}x{r['image_size']}", f"{r['compile_s']:.1f}",
             f"{r['eager_ms']:.0f}", f"{r['compiled_ms']:.0f}", f"{r['speedup']:.2f}x",
             f"{r['first_step_loss_diff']:.1e}", percent(payload["background_load"][r["model_size"]])]
            for r in payload["results"]]
    return markdown_table(headers, rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    reached = ", ".join(f"{r['model_size']} {r['speedup']:.2f}x after {r['compile_s']:.0f} s of compilation"
                        for r in payload["results"])
    return "eager", "on by default where faster", reached


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.cli.bench_compile import bench_size

    results = [bench_size(size, args, run) for size in args.model_size]
    print(readme_table(run.write(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
