"""Benchmark reports shared by the few-shot and label-fraction tools.

A *run record* is a JSON object holding the run's coordinates (``{"shots": 10, "seed": 0}``,
``{"fraction": 0.01, "init": "detreg", "seed": 42}``) and its ``metrics``: a nested dict whose leaves are
COCO metrics in [0, 1] (``{"novel": {"AP": ...}, "base": {...}}`` or ``{"AP": ..., "AP50": ...}``).
`aggregate` groups records (typically over seeds) into *summary entries* whose leaves are
``{"mean", "std", "n"}``; `markdown_table` renders them, and `write_report` writes ``results.json`` and
``results.md`` atomically, so a reader of an interrupted benchmark sees the last complete report.

Standard deviations are sample standard deviations (``n - 1``; 0 for a single seed). A COCO metric of -1
means "undefined" (no ground truth to score, e.g. ``APl`` without large objects): it is left out of the
mean, and a leaf with no defined value at all is ``{"mean": None, "std": None, "n": 0}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detr_ssl.atomic_io import atomic_write, atomic_write_json

__all__ = [
    "RESULTS_JSON",
    "RESULTS_MD",
    "Column",
    "aggregate",
    "field_column",
    "format_stats",
    "markdown_table",
    "mean_std",
    "metric_column",
    "write_report",
]

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

#: A table column: its header and how to render one summary entry as a cell.
Column = tuple[str, Callable[[Mapping[str, Any]], str]]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1`` in the denominator; 0 for one value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _leaf_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    defined = [float(v) for v in values if v >= 0]
    if not defined:
        return {"mean": None, "std": None, "n": 0}
    mean, std = mean_std(defined)
    return {"mean": mean, "std": std, "n": len(defined)}


def _stats_tree(trees: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per leaf of the first tree, the statistics of that leaf over all trees (which share one layout)."""
    result: dict[str, Any] = {}
    for key, value in trees[0].items():
        if isinstance(value, Mapping):
            result[key] = _stats_tree([tree[key] for tree in trees])
        else:
            result[key] = _leaf_stats([tree[key] for tree in trees])
    return result


def aggregate(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Group run records by their values of the ``group_by`` fields (in first-seen order).

    Returns one summary entry per group: the ``group_by`` fields, ``seeds`` (the seeds of its runs) and
    ``metrics`` shaped like the runs' metrics with every leaf replaced by ``{"mean", "std", "n"}``.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[field] for field in group_by), []).append(run)
    return [
        {**dict(zip(group_by, key)), "seeds": [run["seed"] for run in members],
         "metrics": _stats_tree([run["metrics"] for run in members])}
        for key, members in groups.items()
    ]


def format_stats(stats: Mapping[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` of a summary leaf, scaled (AP in percent by default); the mean alone for a single
    value, ``"n/a"`` when no value was defined."""
    if not stats["n"]:
        return "n/a"
    mean = f"{stats['mean'] * scale:.{digits}f}"
    return mean if stats["n"] == 1 else f"{mean} ± {stats['std'] * scale:.{digits}f}"


def field_column(header: str, field: str, render: Callable[[Any], str] = str) -> Column:
    """A column showing a grouping field of the summary entry (``render`` formats its value)."""
    return header, lambda entry: render(entry[field])


def metric_column(header: str, path: str, scale: float = 100.0, digits: int = 1) -> Column:
    """A column showing a metric as mean ± std; ``path`` is ``/``-separated (``"novel/AP"``, ``"AP"``)."""

    def cell(entry: Mapping[str, Any]) -> str:
        stats: Any = entry["metrics"]
        for key in path.split("/"):
            stats = stats[key]
        return format_stats(stats, scale, digits)

    return header, cell


def markdown_table(entries: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub-flavoured markdown table: one row per summary entry, one column per ``columns`` item."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(render(entry) for _, render in columns) + " |" for entry in entries]
    return "\n".join(lines) + "\n"


def write_report(output_dir: str | Path, results: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``output_dir``, each atomically; returns both paths."""
    output_dir = Path(output_dir)
    json_path, md_path = output_dir / RESULTS_JSON, output_dir / RESULTS_MD
    atomic_write_json(json_path, results, indent=1)
    atomic_write(md_path, lambda handle: handle.write(markdown.encode("utf-8")))
    return json_path, md_path
