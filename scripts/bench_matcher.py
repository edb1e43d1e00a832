#!/usr/bin/env python
"""Benchmark the Hungarian matcher: our batched cost vs a per-image loop (the DETR reference approach).

Prints a table and writes ``bench_results/matcher.json``. The peer computes each image's cost matrix on its
own (``cost_matrix`` on that image's queries and targets) and runs the assignment; ours is
``HungarianMatcher.forward``. Both must give assignments of identical total cost (checked per image on the
per-image cost matrices; a tie can pick different pairs of equal cost). Time: median wall time over
``--repeats`` calls after ``--warmup``, the two methods interleaved call by call.

Example: ``python scripts/bench_matcher.py`` (seconds on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment

from detr_ssl.matcher import HungarianMatcher


def make_batch(batch: int, queries: int, targets: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=g)
    boxes = torch.cat((torch.rand(batch, queries, 2, generator=g) * 0.8 + 0.1,
                       torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.02), dim=-1)
    sizes = torch.randint(max(1, targets // 2), targets + 1, (batch,), generator=g).tolist()
    truth = [{"labels": torch.randint(0, classes, (k,), generator=g),
              "boxes": torch.cat((torch.rand(k, 2, generator=g) * 0.8 + 0.1,
                                  torch.rand(k, 2, generator=g) * 0.3 + 0.02), dim=-1)} for k in sizes]
    return logits, boxes, truth


def per_image(matcher: HungarianMatcher, logits, boxes, truth):
    matches = []
    for i, target in enumerate(truth):
        cost = matcher.cost_matrix(logits[i], boxes[i], target["labels"], target["boxes"])
        rows, cols = linear_sum_assignment(cost.numpy())
        matches.append((torch.as_tensor(rows), torch.as_tensor(cols)))
    return matches


def total_cost(matcher: HungarianMatcher, logits, boxes, truth, matches) -> float:
    total = 0.0
    for i, (target, (rows, cols)) in enumerate(zip(truth, matches)):
        cost = matcher.cost_matrix(logits[i], boxes[i], target["labels"], target["boxes"])
        total += float(cost[rows, cols].double().sum())
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--targets", type=int, default=50, help="most targets per image (each has K/2..K)")
    parser.add_argument("--classes", type=int, default=91)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    matcher = HungarianMatcher()
    logits, boxes, truth = make_batch(args.batch, args.queries, args.targets, args.classes, seed=0)
    methods = {"ours (batched cost)": lambda: matcher(logits, boxes, truth),
               "per-image loop": lambda: per_image(matcher, logits, boxes, truth)}
    costs = {name: total_cost(matcher, logits, boxes, truth, run()) for name, run in methods.items()}
    if abs(costs["ours (batched cost)"] - costs["per-image loop"]) > 1e-3 * max(1.0, abs(costs["per-image loop"])):
        raise SystemExit(f"total matching costs differ: {costs}")
    times: dict[str, list[float]] = {name: [] for name in methods}
    for repeat in range(args.warmup + args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    peer = medians["per-image loop"]
    print(f"Hungarian matching, batch {args.batch} x {args.queries} queries x up to {args.targets} targets, "
          f"{args.classes} classes, {torch.get_num_threads()} threads; total cost {costs['per-image loop']:.3f} (same for both)")
    print("| method | median ms | speed-up vs per-image loop |")
    print("|---|---|---|")
    for name, median in medians.items():
        print(f"| {name} | {median * 1e3:.2f} | {peer / median:.2f}x |")
    result = {"machine": platform.platform(), "threads": torch.get_num_threads(), "args": vars(args) | {"output": str(args.output)},
              "total_cost": costs, "median_s": medians, "speedup_vs_per_image": peer / medians["ours (batched cost)"]}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "matcher.json").write_text(json.dumps(result, indent=2))
    print(f"written to {args.output / 'matcher.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
