"""The benchmark drivers' ``--jobs``: runs side by side in worker processes, each after the runs it needs,
its output in its log file, the first failure reported with the run's name and log."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from detr_ssl.cli import run_pool
from detr_ssl.cli.run_pool import Job, run_jobs
from detr_ssl.errors import ConfigError, DataError


def _note(folder: Path, key: str, fail: bool = False) -> dict[str, Any]:
    """A job: prints a line, fails or leaves ``KEY.done``; returns who ran it and what had finished before."""
    import torch

    finished_before = sorted(path.stem for path in folder.glob("*.done"))
    print(f"job {key} says hello", flush=True)
    if fail:
        raise DataError(f"{key}.json: broken input")
    (folder / f"{key}.done").write_text("")
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "finished_before": finished_before,
            "bars_off": os.environ.get("TQDM_DISABLE")}


def _job(folder: Path, key: str, needs: tuple[str, ...] = (), fail: bool = False) -> Job:
    return Job(key, f"run {key}", functools.partial(_note, folder, key, fail), folder / key / "console.log", needs)


def _run(jobs: list[Job], workers: int) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(the start/done events in order, each job's result)."""
    events, results = [], {}

    def done(job: Job, result: Any) -> None:
        events.append(("done", job.key))
        results[job.key] = result

    run_jobs(jobs, workers, lambda job: events.append(("start", job.key)), done)
    return events, results


def test_two_workers_run_each_job_after_what_it_needs_with_its_output_in_its_log(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    jobs = [_job(tmp_path, "c", needs=("a",)), _job(tmp_path, "a"), _job(tmp_path, "b"),
            _job(tmp_path, "d", needs=("b", "c")), _job(tmp_path, "e", needs=("finished-before",))]
    events, results = _run(jobs, workers=2)
    assert set(results) == {"a", "b", "c", "d", "e"}
    assert set(results["c"]["finished_before"]) >= {"a"} and results["d"]["finished_before"][:3] == ["a", "b", "c"]
    for later, earlier in (("c", "a"), ("d", "b"), ("d", "c")):
        assert events.index(("start", later)) > events.index(("done", earlier))
    assert max(sum(1 for kind, _ in events[:i + 1] if kind == "start") - sum(1 for kind, _ in events[:i + 1]
                                                                           if kind == "done")
               for i in range(len(events))) <= 2  # never more than two at a time
    # In workers, each with its share of the threads and no progress bars; their output in the logs only.
    assert all(result["pid"] != os.getpid() for result in results.values())
    assert {result["threads"] for result in results.values()} == {max(1, results["a"]["threads"])}
    assert results["a"]["threads"] <= max(1, (os.cpu_count() or 1) // 2)
    assert {result["bars_off"] for result in results.values()} == {"1"}
    assert "says hello" not in capfd.readouterr().out
    for key in results:
        assert f"job {key} says hello" in (tmp_path / key / "console.log").read_text()


def test_the_threads_are_shared_among_the_workers_there_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pools = []

    class RecordedPool(ProcessPoolExecutor):
        def __init__(self, max_workers: int, **options: Any) -> None:
            pools.append((max_workers, options["initargs"]))
            super().__init__(max_workers, **options)

    monkeypatch.setattr(run_pool, "ProcessPoolExecutor", RecordedPool)
    _, results = _run([_job(tmp_path, "a"), _job(tmp_path, "b")], workers=4)
    assert set(results) == {"a", "b"}
    assert pools == [(2, (2,))]  # two jobs: two workers, each with half the threads (not a quarter)


def test_the_first_failure_names_the_run_and_its_log_and_starts_nothing_after_it(tmp_path: Path) -> None:
    jobs = [_job(tmp_path, "bad", fail=True), _job(tmp_path, "ok"), _job(tmp_path, "after", needs=("bad",))]
    events, results = [], {}
    with pytest.raises(ConfigError) as failure:
        run_jobs(jobs, 2, lambda job: events.append(job.key), lambda job, result: results.update({job.key: result}))
    message = str(failure.value)
    assert "run bad failed" in message and "bad.json: broken input" in message
    assert str(tmp_path / "bad" / "console.log") in message
    assert "after" not in events and not (tmp_path / "after.done").exists()
    assert "bad" not in results and (tmp_path / "ok.done").exists() == ("ok" in results)


def test_one_worker_runs_here_in_dependency_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, results = _run([_job(tmp_path, "late", needs=("early",)), _job(tmp_path, "early")], workers=1)
    assert events == [("start", "early"), ("done", "early"), ("start", "late"), ("done", "late")]
    assert {result["pid"] for result in results.values()} == {os.getpid()}
    assert "job late says hello" in capsys.readouterr().out and not (tmp_path / "late").exists()


def test_jobs_that_wait_on_each_other_or_no_worker_are_errors(tmp_path: Path) -> None:
    loop = [_job(tmp_path, "x", needs=("y",)), _job(tmp_path, "y", needs=("x",))]
    for workers in (1, 2):
        with pytest.raises(ValueError, match="wait on each other"):
            _run(loop, workers)
    with pytest.raises(ConfigError, match="--jobs"):
        _run([_job(tmp_path, "x")], workers=0)
    assert not list(tmp_path.glob("*.done"))
