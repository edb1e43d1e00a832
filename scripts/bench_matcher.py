"""Benchmark the Hungarian matcher against the DETR reference and a per-image loop, at several batch sizes.

Prints a table and writes ``--output`` (default ``bench_results/matcher.json``).

Inputs per size ``BxQxK`` (``--sizes``, default ``16x300x50 2x300x20``): ``B`` images of ``Q`` queries with
random logits over ``--classes`` classes (default 91) and random cxcywh boxes, and per image ``K/2..K``
random targets. Every method uses the same matching cost (focal class cost, L1, GIoU, the default weights):

- ``ours (HungarianMatcher)``: ``HungarianMatcher.forward``, which on CPU stacks each image's own costs
  into one NumPy ``(sum K, Q)`` matrix and solves each image's block (lapx's ``lapjvr`` when installed,
  else scipy), and elsewhere runs the padded batch below;
- ``ours, padded (B, Q, K_max) batch path``: ``HungarianMatcher.match_padded``, one padded PyTorch cost
  for the batch, copied to the host, then the same solver per image;
- ``DETR reference: one (B*Q, sum K) cost, split``: ``HungarianMatcher.cost_matrix`` of every query of the
  batch against every target of the batch (B times the pairs that matter), ``.view(B, Q, -1).cpu()``, split
  into per-image column blocks, scipy's ``linear_sum_assignment`` on each image's own block;
- ``per-image loop``: per image, ``cost_matrix`` of its queries and targets, then scipy.

What is measured, and how:

- Correctness first: each method's assignment is scored with the per-image ``cost_matrix`` (summed in
  float64); all totals must agree (ties may pick different pairs of equal cost), else the run stops.
- Time: a run is one training step's matchings, ``--matchings-per-step`` calls in a row (default 6: a
  Deformable DETR step matches the final and the 5 auxiliary decoder outputs one after another); the
  table gives the median over ``--repeats`` runs after ``--warmup`` runs, per matching. The methods are
  interleaved run by run (in a new random order each round), so background load on a shared machine hits
  all of them alike; the background load (share of the machine's CPU time other processes used meanwhile)
  is recorded per size. Ours' speed-up against each other method is their median over ours. (Timing
  single calls instead measures mostly the state the previous method left the CPU in: at 2x300x20 a match
  takes about 0.1 ms warm and several times that after a pause.)

Example: ``python scripts/bench_matcher.py`` (seconds on 2 cores; the DETR reference at the large size takes
most of them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent, positive_int

NAME = "matcher"


def size(text: str) -> tuple[int, int, int]:
    """argparse type: ``BxQxK`` (batch, queries, most targets per image), each >= 1."""
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected BxQxK with positive integers, e.g. 16x300x50, got {text!r}")
    return values  # type: ignore[return-value]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=50, warmup=3, device=True)
    parser.add_argument("--sizes", type=size, nargs="+", default=[(16, 300, 50), (2, 300, 20)],
                        help="batch x queries x most targets per image (default: 16x300x50 2x300x20)")
    parser.add_argument("--classes", type=positive_int, default=91, help="number of classes (default 91)")
    parser.add_argument("--matchings-per-step", type=positive_int, default=6,
                        help="calls timed together, as one training step makes them (default 6: Deformable DETR's "
                             "final and 5 auxiliary decoder outputs)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """Per size and method: median ms, ours' speed-up against it, the total assignment cost, bg load."""
    results = payload["results"]
    rows = []
    for row in results["sizes"]:
        for method, median in row["median_ms"].items():
            speedup = row["ours_speedup"].get(method)
            rows.append([row["size"], method, f"{median:.3f}", "-" if speedup is None else f"{speedup:.2f}x",
                         f"{row['total_cost'][method]:.3f}", percent(payload["background_load"][row["size"]])])
    title = (f"Batch x queries x most targets, {results['classes']} classes; our assignment solver: "
             f"{results['solver']}; peers solve with scipy; ms per matching, timed "
             f"{results.get('matchings_per_step', 1)} in a row as in a training step")
    return title + "\n\n" + markdown_table(["size", "method", "median ms", "ours vs it", "total cost", "bg load"],
                                           rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    targets = payload["results"]["targets"]
    reached = "; ".join(f"{row['size']}: " + ", ".join(f"{row['ours_speedup'][peer]:.2f}x" for peer in targets)
                        for row in payload["results"]["sizes"])
    return (" and ".join(targets), " and ".join(f">= {target:g}x" for target in targets.values()), reached)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    import torch

    from detr_ssl.cli.bench_matcher import TARGETS, measure
    from detr_ssl.matcher import ASSIGNMENT_SOLVER

    rows = measure(args.sizes, args.classes, torch.device(args.device), args.warmup, args.repeats, args.seed, run,
                   args.matchings_per_step)
    payload = run.write({"classes": args.classes, "solver": ASSIGNMENT_SOLVER, "targets": TARGETS,
                         "matchings_per_step": args.matchings_per_step, "sizes": rows},
                        libraries=("scipy", "lapx"), device=args.device)
    print(readme_table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
