"""Benchmark reports: mean ± std over seeds, the markdown table, atomic results files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detr_ssl.protocols.report import (
    aggregate,
    field_column,
    format_stats,
    markdown_table,
    mean_std,
    metric_column,
    write_report,
)


def run(shots: int, seed: int, novel_ap: float, base_ap: float) -> dict:
    return {"shots": shots, "seed": seed, "metrics": {"novel": {"AP": novel_ap}, "base": {"AP": base_ap}}}


def test_mean_and_sample_std() -> None:
    assert mean_std([0.1, 0.2, 0.3]) == pytest.approx((0.2, 0.1))
    assert mean_std([0.25]) == (0.25, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_aggregate_groups_runs_and_keeps_the_metric_layout() -> None:
    runs = [run(10, 0, 0.1, 0.5), run(30, 0, 0.2, 0.6), run(10, 1, 0.3, 0.7)]
    summary = aggregate(runs, ["shots"])
    assert [entry["shots"] for entry in summary] == [10, 30]
    assert summary[0]["seeds"] == [0, 1]
    assert summary[0]["metrics"]["novel"]["AP"] == pytest.approx({"mean": 0.2, "std": 2**0.5 * 0.1, "n": 2})
    assert summary[1]["metrics"]["base"]["AP"] == {"mean": 0.6, "std": 0.0, "n": 1}


def test_undefined_coco_metrics_are_left_out() -> None:
    runs = [run(10, 0, -1.0, 0.5), run(10, 1, 0.4, -1.0), run(10, 2, -1.0, 0.7)]
    novel = aggregate(runs, ["shots"])[0]["metrics"]["novel"]["AP"]
    assert novel == {"mean": 0.4, "std": 0.0, "n": 1}
    only_undefined = aggregate([run(5, 0, -1.0, -1.0)], ["shots"])[0]["metrics"]["novel"]["AP"]
    assert only_undefined == {"mean": None, "std": None, "n": 0} and format_stats(only_undefined) == "n/a"


def test_format_stats() -> None:
    assert format_stats({"mean": 0.1234, "std": 0.0049, "n": 3}) == "12.3 ± 0.5"
    assert format_stats({"mean": 0.1234, "std": 0.0, "n": 1}) == "12.3"
    assert format_stats({"mean": 0.5, "std": 0.01, "n": 2}, scale=1.0, digits=2) == "0.50 ± 0.01"


def test_markdown_table() -> None:
    summary = aggregate([run(10, 0, 0.1, 0.5), run(10, 1, 0.3, 0.7)], ["shots"])
    table = markdown_table(summary, [field_column("K", "shots"), metric_column("novel AP", "novel/AP"),
                                     metric_column("base AP", "base/AP")])
    assert table.splitlines() == ["| K | novel AP | base AP |", "|---|---|---|", "| 10 | 20.0 ± 14.1 | 60.0 ± 14.1 |"]


def test_write_report_writes_both_files_atomically(tmp_path: Path) -> None:
    json_path, md_path = write_report(tmp_path / "out", {"runs": [1, 2]}, "# title\n")
    assert json.loads(json_path.read_text()) == {"runs": [1, 2]}
    assert md_path.read_text() == "# title\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]  # no temp files
