"""The measurement tools the benchmark scripts share."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from detr_ssl.benchmarking import environment, markdown_table, peak_rss_in_fresh_process, time_interleaved, write_json


def test_time_interleaved_times_every_call_the_requested_number_of_times() -> None:
    counts = {"a": 0, "b": 0}

    def call(name: str) -> Callable[[], None]:
        def run() -> None:
            counts[name] += 1
        return run

    times, load = time_interleaved({"a": call("a"), "b": call("b")}, warmup=2, repeats=3)
    assert counts == {"a": 5, "b": 5}
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}
    assert all(value >= 0 for values in times.values() for value in values)
    assert load is None or 0.0 <= load <= 1.0


def allocate_and_touch(megabytes: int) -> Callable[[], torch.Tensor]:
    """A setup for peak_rss_in_fresh_process whose call needs ``megabytes`` of fresh memory."""
    return lambda: torch.ones(megabytes * 2**20 // 4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident-set accounting is read from /proc")
def test_peak_memory_counts_what_the_call_allocates_not_the_setup() -> None:
    small = peak_rss_in_fresh_process(allocate_and_touch, 8)
    large = peak_rss_in_fresh_process(allocate_and_touch, 96)
    assert small is not None and large is not None
    assert 80 <= large - small <= 110


def test_results_are_written_as_json_with_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "nested" / "result.json"
    write_json(path, {"environment": environment(extra_library="1.0"), "value": 1.5})
    data = json.loads(path.read_text())
    assert data["value"] == 1.5
    assert data["environment"]["torch"] == torch.__version__
    assert data["environment"]["extra_library"] == "1.0"
    assert str(path) in capsys.readouterr().out


def test_markdown_table_has_a_header_rule_and_one_line_per_row() -> None:
    table = markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | y |"]
