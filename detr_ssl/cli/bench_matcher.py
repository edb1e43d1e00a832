"""The measurement code of ``scripts/bench_matcher.py`` (what it measures, and how, is in its docstring): our
Hungarian matcher against the DETR reference (one concatenated cost, split) and a per-image loop."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from functools import partial

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detr_ssl.bench_cli import BenchRun
from detr_ssl.benchmarking import time_interleaved
from detr_ssl.matcher import HungarianMatcher, MatchIndices

OURS = "ours (HungarianMatcher)"
OURS_PADDED = "ours, padded (B, Q, K_max) batch path"
DETR_REFERENCE = "DETR reference: one (B*Q, sum K) cost, split"
PER_IMAGE = "per-image loop"
#: The acceptance targets: ours' speed-up against each peer.
TARGETS = {DETR_REFERENCE: 2.0, PER_IMAGE: 1.0}
#: Relative difference of total assignment costs still counted as equal (float32 costs, summed in float64).
COST_TOLERANCE = 1e-5

Targets = list[dict[str, Tensor]]


def make_batch(batch: int, queries: int, max_targets: int, classes: int, seed: int
               ) -> tuple[Tensor, Tensor, Targets]:
    """Random logits ``(B, Q, C)``, cxcywh boxes ``(B, Q, 4)`` and per image ``K/2..K`` random targets."""
    generator = torch.Generator().manual_seed(seed)

    def boxes(*shape: int) -> Tensor:
        return torch.cat((torch.rand(*shape, 2, generator=generator) * 0.8 + 0.1,
                          torch.rand(*shape, 2, generator=generator) * 0.3 + 0.02), dim=-1)

    logits = torch.randn(batch, queries, classes, generator=generator)
    predicted = boxes(batch, queries)
    counts = torch.randint(max(1, max_targets // 2), max_targets + 1, (batch,), generator=generator).tolist()
    targets = [{"labels": torch.randint(0, classes, (count,), generator=generator), "boxes": boxes(count)}
               for count in counts]
    return logits, predicted, targets


def _indices(rows: object, cols: object) -> tuple[Tensor, Tensor]:
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def detr_reference(matcher: HungarianMatcher, logits: Tensor, boxes: Tensor, targets: Targets) -> MatchIndices:
    """DETR's approach: one cost of every query of the batch against every target of the batch,
    ``(B*Q, sum K)``, moved to the host, split into column blocks per image, scipy on image ``i``'s block."""
    batch, queries = logits.shape[:2]
    sizes = [len(target["boxes"]) for target in targets]
    cost = matcher.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), torch.cat([t["labels"] for t in targets]),
                               torch.cat([t["boxes"] for t in targets]))
    blocks = cost.view(batch, queries, -1).cpu().split(sizes, -1)
    return [_indices(*linear_sum_assignment(block[image].numpy())) for image, block in enumerate(blocks)]


def per_image_loop(matcher: HungarianMatcher, logits: Tensor, boxes: Tensor, targets: Targets) -> MatchIndices:
    """Per image: :meth:`HungarianMatcher.cost_matrix` of its queries and targets, then scipy."""
    return [_indices(*linear_sum_assignment(
        matcher.cost_matrix(logits[i], boxes[i], target["labels"], target["boxes"]).cpu().numpy()))
        for i, target in enumerate(targets)]


def total_cost(matcher: HungarianMatcher, logits: Tensor, boxes: Tensor, targets: Targets,
               matches: MatchIndices) -> float:
    """Sum over images of the assigned pairs' :meth:`HungarianMatcher.cost_matrix` entries (float64)."""
    total = 0.0
    for i, (target, (query_idx, target_idx)) in enumerate(zip(targets, matches)):
        cost = matcher.cost_matrix(logits[i], boxes[i], target["labels"], target["boxes"]).cpu()
        total += float(cost[query_idx, target_idx].double().sum())
    return total


def calls(matcher: HungarianMatcher, logits: Tensor, boxes: Tensor, targets: Targets
          ) -> dict[str, Callable[[], MatchIndices]]:
    """Each method, as a call that matches this batch."""
    inputs = (logits, boxes, targets)
    return {OURS: partial(matcher, *inputs), OURS_PADDED: partial(matcher.match_padded, *inputs),
            DETR_REFERENCE: partial(detr_reference, matcher, *inputs),
            PER_IMAGE: partial(per_image_loop, matcher, *inputs)}


def repeated(call: Callable[[], MatchIndices], times: int) -> Callable[[], None]:
    """``call`` made ``times`` times in a row: the matchings of one training step."""

    def calls() -> None:
        for _ in range(times):
            call()

    return calls


def measure(sizes: Sequence[tuple[int, int, int]], classes: int, device: torch.device, warmup: int, repeats: int,
            seed: int, bench: BenchRun, per_step: int = 1) -> list[dict[str, object]]:
    """Per size (batch, queries, most targets): every method's total assignment cost (all must agree) and
    median ms per matching, timed ``per_step`` calls at a time, interleaved (recorded in ``bench`` under the
    size's label, per matching), and our speed-up against each other method."""
    matcher = HungarianMatcher()
    rows = []
    for batch, queries, max_targets in sizes:
        label = f"{batch}x{queries}x{max_targets}"
        logits, boxes, targets = make_batch(batch, queries, max_targets, classes, seed)
        logits, boxes = logits.to(device), boxes.to(device)
        targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
        methods = calls(matcher, logits, boxes, targets)
        costs = {name: total_cost(matcher, logits, boxes, targets, run()) for name, run in methods.items()}
        spread = max(costs.values()) - min(costs.values())
        if spread > COST_TOLERANCE * max(1.0, abs(costs[PER_IMAGE])):
            raise RuntimeError(f"{label}: the methods' total assignment costs differ: {costs}")
        steps = {name: repeated(run, per_step) for name, run in methods.items()}
        step_times, load = time_interleaved(steps, warmup, repeats, device)
        times = {name: [value / per_step for value in values] for name, values in step_times.items()}
        bench.record(label, times, load)
        medians = {name: statistics.median(values) for name, values in times.items()}
        rows.append({"size": label, "batch": batch, "queries": queries, "max_targets": max_targets,
                     "targets": [len(target["boxes"]) for target in targets], "classes": classes,
                     "total_cost": costs, "median_ms": medians,
                     "ours_speedup": {name: medians[name] / medians[OURS] for name in methods if name != OURS}})
        print(f"  done {label}", file=sys.stderr, flush=True)
    return rows
