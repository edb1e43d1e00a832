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
from pathlib import Path

from detr_ssl.benchmarking import environment, markdown_table, synthetic_coco_predictions, time_interleaved, write_json
from detr_ssl.evaluation import CocoEvaluator

BACKENDS = ("pycocotools", "faster-coco-eval")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("bench_results/coco_eval.json"))
    args = parser.parse_args()
    ground_truth, detections = synthetic_coco_predictions(args.images, seed=0)
    category_ids = [category["id"] for category in ground_truth["categories"]]
    evaluators = {}
    for backend in BACKENDS:
        evaluators[backend] = CocoEvaluator(ground_truth, category_ids, backend=backend)
        for image_id, found in detections.items():
            evaluators[backend].update(image_id, found)
    stats = {backend: evaluator.stats() for backend, evaluator in evaluators.items()}
    if max(abs(a - b) for a, b in zip(*stats.values())) > 1e-9:
        raise SystemExit(f"the backends disagree: {stats}")
    times, background = time_interleaved({name: evaluator.compute for name, evaluator in evaluators.items()},
                                         warmup=0, repeats=args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    peer = medians["pycocotools"]
    print(f"COCO box evaluation of {args.images} images, {sum(len(d['scores']) for d in detections.values())} "
          f"detections; AP {stats['pycocotools'][0]:.4f} from both")
    print(markdown_table(["backend", "median s", "speed-up vs pycocotools"],
                         [[name, f"{ms / 1e3:.2f}", f"{peer / ms:.2f}x"] for name, ms in medians.items()]))
    write_json(args.output, {"environment": environment(background_load=background),
                             "results": {"images": args.images, "median_ms": medians, "stats": stats,
                                         "speedup": peer / medians["faster-coco-eval"]}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
