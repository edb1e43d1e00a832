#!/usr/bin/env python
"""Representation quality of our backbone pretexts: k-NN accuracy on the demo's object crops.

Pretrains the tiny preset's ResNet with each backbone pretext (``--tasks``, default: every backbone pretext)
and each seed (``--seeds``) on the demo detection set's *training images* (labels ignored), then embeds
every annotated object crop of the demo train split (the bank) and val split (the queries) with the frozen
backbone (layer4, global pooled) and scores a cosine k-NN vote. The peer is the same backbone at random
initialisation (one per seed), in the same run. Each cell is the mean ± standard deviation over the seeds.

Prints a table and writes ``--output`` (default ``bench_results/knn.json``); pretraining runs go to
``<--runs-dir>/knn_<task>_seed<seed>/`` (default ``bench_results/``) and are reused on a rerun (``--retrain``
to redo them). Example: ``python scripts/bench_knn.py`` (minutes per task and seed on 2 cores, almost all
of it pretraining).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from detr_ssl.bench_cli import RESULTS_DIR, BenchRun, bench_parser, markdown_table, positive_int
from detr_ssl.errors import DetrSslError

NAME = "knn"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=None, seed=None)
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="backbone pretexts to pretrain and probe (default: all of them)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="pretraining epochs (default: the task's demo preset)")
    parser.add_argument("--arch", default="resnet18", help="backbone (default resnet18)")
    parser.add_argument("--k", type=positive_int, nargs="+", default=[1, 5, 20], help="neighbours (default 1 5 20)")
    parser.add_argument("--crop-size", type=positive_int, default=64, help="object crop side in px (default 64)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one pretraining run (and one random-init peer) per seed (default 0 1 2)")
    parser.add_argument("--retrain", action="store_true",
                        help="pretrain again even when <runs-dir>/knn_<task>_seed<seed>/ holds a finished run")
    parser.add_argument("--runs-dir", type=Path, default=RESULTS_DIR,
                        help=f"folder of the pretraining runs (default {RESULTS_DIR})")
    return parser.parse_args(argv)


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def _columns(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    """The accuracies every probe reports (one per k)."""
    return list(next(iter(runs.values()))[0])


def readme_table(payload: dict[str, Any]) -> str:
    """A title line (backbone, crops, seeds), then per backbone each k-NN accuracy as mean ± std over seeds."""
    args, runs = payload["args"], payload["results"]["runs"]
    columns = _columns(runs)
    rows = [[name, *(_mean_std([run[c] for run in per_seed]) for c in columns)] for name, per_seed in runs.items()]
    title = (f"k-NN on demo object crops ({args['arch']}, layer4 pooled, {args['crop_size']} px crops; bank = "
             f"{payload['results']['bank_objects']} train objects, queries = val objects; mean ± std over seeds "
             f"{', '.join(map(str, args['seeds']))})")
    return title + "\n\n" + markdown_table(["backbone", *columns], rows)


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    runs = payload["results"]["runs"]
    column = _columns(runs)[0]
    best = max(runs, key=lambda name: statistics.mean(run[column] for run in runs[name]))
    return ("the same backbone at random initialisation", "report",
            f"best {column}: {best} {_mean_std([run[column] for run in runs[best]])}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.cli.bench_knn import probe_all

    try:
        results = probe_all(args)
    except DetrSslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(readme_table(run.write(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
