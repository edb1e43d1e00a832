#!/usr/bin/env python
"""Benchmark the fine-tuning data pipeline against the model's training step: is the loader ever the bottleneck?

Prints a table and writes ``--output`` (default ``bench_results/dataloader.json``).

Data: a generated COCO folder (the demo shape-detection set, ``demo_detection_dataset``, rendered at
``--image-size`` into a temporary folder and re-encoded as JPEG, like COCO's files). Everything else is
built as ``scripts/finetune.py`` builds it: the config from `parse_finetune_args` (``--preset demo``:
short side 96-128 and batch 4; ``--preset paper``: short side 480-800, random crops and batch 2), the
training set and its augmentation from `detr_ssl.cli.finetune.load_datasets`, the model and its loss from
`build_supervised`, the optimiser from `build_optimizer`. The loader is the trainer's: per-sample seeded
augmentation (`SeededAugmentation`), shuffled, `collate_detection`.

What is measured, and how:

- ``loader``: images/s of one pass over the training set with ``--workers`` worker processes, the first
  batch excluded (worker start-up); median over ``--repeats`` passes after ``--warmup``.
- ``model step``: the training step on loaded batches (the task's loss, backward, gradient clipping, the
  AdamW step), cycling through ``--step-batches`` batches; median ms over ``--repeats`` steps after
  ``--warmup``, as images/s. It is the peer: ``loader / model`` > 1 means the loader alone outpaces the
  step, so with enough cores it is not the bottleneck.
- The loader passes and model steps are interleaved run by run (`time_interleaved`), so background load on
  a shared machine hits both alike; ``bg load`` is the share of the machine's CPU time other processes
  used meanwhile.
- ``training loop``: both together, as the trainer runs them (a step per batch from the loader), images/s
  of ``--loop-repeats`` passes (first batch excluded). Workers then share the cores with the step:
  ``loop / model`` near 1 means the loader hides behind the step on this machine; well below 1, training
  waits for data.

Example: ``python scripts/bench_dataloader.py`` (a minute or two on 2 cores);
``--preset paper`` uses paper-size augmentation on 640-px images (a few minutes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent, positive_int

NAME = "dataloader"
#: Per preset: the side of the generated images (the demo's 128 px, COCO's typical 640 px for the paper
#: recipe) and how many there are.
IMAGE_SIZES = {"demo": 128, "paper": 640}
NUM_IMAGES = {"demo": 64, "paper": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=5, warmup=2)
    parser.add_argument("--preset", choices=("demo", "paper"), default="demo",
                        help="fine-tuning preset: augmentation sizes, batch size (default demo)")
    parser.add_argument("--model-size", choices=("tiny", "r50"), default="tiny", help="model preset (default tiny)")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="side of the generated images (default: 128 for demo, 640 for paper)")
    parser.add_argument("--num-images", type=positive_int, default=None,
                        help="images generated (default: 64 demo, 32 paper)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per batch (default: the preset's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts (default 0 2)")
    parser.add_argument("--step-batches", type=positive_int, default=4,
                        help="batches the model steps cycle through (default 4)")
    parser.add_argument("--loop-repeats", type=positive_int, default=1, help="passes of the training loop (default 1)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """A title line (data, batch, the model step), then the model step (the peer) and, per worker count, the
    loader's images/s and the training loop's."""
    result = payload["results"]
    rows = [["model step (peer)", "-", f"{result['model_images_per_s']:.1f}", "1.00", "-"]]
    for workers, numbers in result["workers"].items():
        rows.append([f"loader, {workers} workers", workers, f"{numbers['loader_images_per_s']:.1f}",
                     f"{numbers['loader_vs_model']:.2f}",
                     f"{numbers['loop_images_per_s']:.1f} img/s = {numbers['loop_vs_model']:.2f} x model"])
    title = (f"{result['preset']} preset, {result['model_size']} model, {result['num_images']} JPEGs of "
             f"{result['image_size']} px, batch {result['batch_size']}: model step {result['model_step_ms']:.1f} ms, "
             f"bg load {percent(payload['background_load']['model step and loader passes'])}")
    headers = ["what", "workers", "images/s", "÷ model images/s", "training loop (loader + step)"]
    return title + "\n\n" + markdown_table(headers, rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    workers = payload["results"]["workers"]
    reached = "loader " + " / ".join(f"{numbers['loader_vs_model']:.0f}x ({count} workers)"
                                     for count, numbers in workers.items()) + " the model's images/s"
    return f"the {payload['results']['model_size']} model's training step", "loader never the bottleneck", reached


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.cli.bench_dataloader import measure

    image_size = args.image_size or IMAGE_SIZES[args.preset]
    num_images = args.num_images or NUM_IMAGES[args.preset]
    result = measure(args, image_size, num_images, run)
    result = {"preset": args.preset, "model_size": args.model_size, "image_size": image_size, **result}
    print(readme_table(run.write(result, libraries=("pillow",))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
