#!/usr/bin/env python
"""Rewrite the benchmark tables of README.md and docs/PERFORMANCE.md from the results in docs/bench/*.json.

Each ``<!-- bench:... -->`` block is rendered from its committed result files by the benchmark script that
wrote them (see ``detr_ssl.bench_report``); blocks whose files are missing are left as they are and listed.
``--check`` changes nothing and exits 1 when a file differs from what its results give (the tests run it),
``--strict`` also when a block is still pending.

Example, after ``python scripts/bench_train_step.py --output docs/bench/train_step.json``:
``python scripts/bench_report.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detr_ssl.bench_report import Renderer, stale_files
from detr_ssl.errors import DetrSslError

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=[ROOT / "README.md", ROOT / "docs" / "PERFORMANCE.md"],
                        help="markdown files with bench blocks (default: README.md docs/PERFORMANCE.md)")
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "docs" / "bench",
                        help="folder of the result files (default docs/bench)")
    parser.add_argument("--scripts-dir", type=Path, default=ROOT / "scripts",
                        help="folder of the bench_<name>.py scripts that render their results (default scripts)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    parser.add_argument("--strict", action="store_true", help="also exit 1 if a block has no results yet")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        stale, pending = stale_files(args.files, Renderer(args.bench_dir, args.scripts_dir), write=not args.check)
    except DetrSslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for entry in pending:
        print(f"pending: {entry}")
    for path in stale:
        print(f"{'out of date' if args.check else 'rewrote'}: {path}")
    return int((args.check and bool(stale)) or (args.strict and bool(pending)))


if __name__ == "__main__":
    sys.exit(main())
