#!/usr/bin/env python
"""COCO box evaluation time: faster-coco-eval against pycocotools on the same detections.

A synthetic set (``--images``, default 5,000 like COCO val2017: up to 7 objects an image, crowd boxes and
images without annotations or detections, up to 100 detections an image) is scored by
``CocoEvaluator.compute`` with each backend, interleaved run by run; both must give the same twelve
numbers. Prints a table and writes ``--output`` (default ``bench_results/coco_eval.json``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent, positive_int

NAME = "coco_eval"
BACKENDS = ("pycocotools", "faster-coco-eval")
PEER = "pycocotools"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=3, warmup=0, threads=False)
    parser.add_argument("--images", type=positive_int, default=5000, help="images in the synthetic set (default 5000)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """A title line (images, detections, the AP both give), then per backend the median time and speed-up."""
    r = payload["results"]
    medians = r["median_ms"]
    rows = [[name, f"{ms / 1e3:.2f}", f"{medians[PEER] / ms:.2f}x", percent(payload["background_load"]["compute"])]
            for name, ms in medians.items()]
    title = f"COCO box evaluation of {r['images']} images, {r['detections']} detections; AP {r['stats'][PEER][0]:.4f}"
    return f"{title} from both\n\n" + markdown_table(["backend", "median s", f"speed-up vs {PEER}", "bg load"], rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    r = payload["results"]
    reached = f"faster-coco-eval (`--eval-backend`, the `fast-eval` extra): **{r['speedup']:.2f}x** on {r['images']:,}"
    return f"{PEER}, the same twelve numbers", "faster", f"{reached} images"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.benchmarking import synthetic_coco_predictions, time_interleaved
    from detr_ssl.evaluation import CocoEvaluator

    ground_truth, detections = synthetic_coco_predictions(args.images, seed=args.seed)
    category_ids = [category["id"] for category in ground_truth["categories"]]
    evaluators = {}
    for backend in BACKENDS:
        evaluators[backend] = CocoEvaluator(ground_truth, category_ids, backend=backend)
        for image_id, found in detections.items():
            evaluators[backend].update(image_id, found)
    stats = {backend: evaluator.stats() for backend, evaluator in evaluators.items()}
    if max(abs(a - b) for a, b in zip(*stats.values())) > 1e-9:
        print(f"error: the backends disagree: {stats}", file=sys.stderr)
        return 1
    times, load = time_interleaved({name: evaluator.compute for name, evaluator in evaluators.items()},
                                   args.warmup, args.repeats)
    run.record("compute", times, load)
    medians = {name: statistics.median(values) for name, values in times.items()}
    results = {"images": args.images, "detections": sum(len(d["scores"]) for d in detections.values()),
               "median_ms": medians, "stats": stats, "speedup": medians[PEER] / medians["faster-coco-eval"]}
    print(readme_table(run.write(results, libraries=("pycocotools", "faster-coco-eval"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
