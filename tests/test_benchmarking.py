"""The measurement tools the benchmark scripts share (``detr_ssl.benchmarking``), their parser and JSON writer
(``detr_ssl.bench_cli``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from detr_ssl.bench_cli import BenchRun, CpuTimes, background_load, bench_parser, library_versions, markdown_table
from detr_ssl.benchmarking import peak_rss_in_fresh_process, time_interleaved


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


def keep_and_allocate(kept_mb: int, fresh_mb: int) -> Callable[[], torch.Tensor]:
    """A setup for peak_rss_in_fresh_process that holds ``kept_mb`` and whose call needs ``fresh_mb`` more."""
    kept = torch.ones(kept_mb * 2**20 // 4)
    return lambda: torch.ones(fresh_mb * 2**20 // 4).add_(kept[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident-set accounting is read from /proc")
def test_peak_memory_counts_what_the_call_allocates_not_the_setup() -> None:
    peak = peak_rss_in_fresh_process(keep_and_allocate, 96, 32)
    assert peak is not None
    assert 30 <= peak <= 45


def test_background_load_is_the_share_of_machine_time_other_processes_used() -> None:
    before = CpuTimes(machine_busy=10.0, machine_total=40.0, own=2.0)
    after = CpuTimes(machine_busy=25.0, machine_total=60.0, own=7.0)  # 15 s busy of 20, 5 s of them ours
    assert background_load(before, after) == pytest.approx(0.5)
    assert background_load(before, CpuTimes(10.0, 60.0, 9.0)) == 0.0  # never negative
    assert background_load(None, after) is None


def test_the_shared_parser_has_the_common_flags_and_takes_the_scripts_own() -> None:
    parser = bench_parser("toy", "Toy benchmark.\n\nDetails.", repeats=4, warmup=1, memory=True)
    parser.add_argument("--size", type=int, default=3)
    args = parser.parse_args(["--threads", "2", "--size", "5"])
    assert (args.repeats, args.warmup, args.seed, args.threads, args.no_memory, args.size) == (4, 1, 0, 2, False, 5)
    assert args.output == Path("bench_results/toy.json")
    assert parser.description == "Toy benchmark."
    without = bench_parser("probe", "Probe.", repeats=None, seed=None, threads=False).parse_args([])
    assert not {"repeats", "warmup", "seed", "threads", "no_memory", "device"} & set(vars(without))
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeats", "0"])


def test_a_run_writes_machine_versions_command_timings_and_results(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--repeats", "2", "--output", str(tmp_path / "nested" / "toy.json")]
    args = bench_parser("toy", "Toy.", repeats=3).parse_args(argv)
    run = BenchRun("toy", args, argv)
    run.record("case a", {"ours": [1.5, 2], "peer": [3.0, 4.0]}, 0.25)
    with pytest.raises(ValueError, match="case a"):
        run.record("case a", {"ours": [1.0]}, None)
    run.write({"speedup": 2.0}, libraries=("numpy", "no-such-distribution"))

    data = json.loads((tmp_path / "nested" / "toy.json").read_text())
    assert data["bench"] == "toy" and data["results"] == {"speedup": 2.0}
    assert data["command"] == f"python scripts/bench_toy.py --repeats 2 --output {tmp_path / 'nested' / 'toy.json'}"
    assert data["args"]["repeats"] == 2 and data["args"]["output"] == str(tmp_path / "nested" / "toy.json")
    assert data["timings_ms"] == {"case a": {"ours": [1.5, 2.0], "peer": [3.0, 4.0]}}
    assert data["background_load"]["case a"] == 0.25
    assert data["machine"]["threads"] == torch.get_num_threads() and data["machine"]["cores"] >= 1
    assert data["versions"]["torch"] == torch.__version__.split("+")[0]
    assert data["versions"]["no-such-distribution"] is None
    assert f"wrote {tmp_path / 'nested' / 'toy.json'}" in capsys.readouterr().out


def test_library_versions_read_installed_metadata() -> None:
    assert library_versions(["numpy"]) == {"numpy": __import__("numpy").__version__}


def test_markdown_table_has_a_header_rule_and_one_line_per_row() -> None:
    table = markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | y |"]
