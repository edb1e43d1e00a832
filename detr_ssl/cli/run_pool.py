"""Runs a benchmark's runs side by side: ``--jobs N`` worker processes, each with its share of the threads.

On a CPU a small detector uses two cores poorly (a step is many small operations, and the convolutions'
backward scales well below 2x), so two one-thread runs side by side finish their pair sooner than the same
two runs one after the other on two threads (the measured gain is in docs/PERFORMANCE.md). A run that
needs another's result (a fine-tune of a pretrained detector, stage 2 after stage 1) starts when that one
has finished. With one job (or one run to do) every run happens in this process, in the order given.

In a worker, a run's own output (its per-epoch lines; no progress bars) goes to its log file; the driver
prints one line when each run starts and ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from detr_ssl.errors import ConfigError


@dataclass(frozen=True)
class Job:
    """One run of a benchmark."""

    key: str
    """Unique name; what other jobs list in ``needs``."""
    label: str
    """How the progress lines name it."""
    work: Callable[[], Any]
    """The run; with several jobs it must pickle (a `functools.partial` of a module-level function, or of a
    method of an object that pickles)."""
    log_file: Path
    """Where a worker writes the run's output."""
    needs: tuple[str, ...] = ()
    """Keys of the jobs that must finish first; a key that is not a job of this call has finished before."""


def run_jobs(jobs: Sequence[Job], workers: int, on_start: Callable[[Job], None],
             on_done: Callable[[Job, Any], None]) -> None:
    """Runs every job, at most ``workers`` at a time, each once all of its ``needs`` have finished.

    ``on_start`` and ``on_done`` (with the job's result) are called in this process, in the order things
    happen. The first failure stops new starts; the runs under way finish (so a rerun skips them), then a
    `ConfigError` names the failed run and its log file.
    """
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"job keys are not unique: {keys}")
    if workers < 1:
        raise ConfigError(f"--jobs needs a positive number of runs side by side, got {workers}")
    ordered = _in_dependency_order(jobs)
    if workers == 1 or len(jobs) <= 1:
        for job in ordered:
            on_start(job)
            on_done(job, job.work())
        return
    pending = ordered  # so some pending job is always ready once the runs under way have finished
    finished: set[str] = set()
    running: dict[Future[Any], Job] = {}
    workers = min(workers, len(jobs))  # the threads are shared among the workers that exist
    context = get_context("spawn")  # fork would copy this process's torch thread pools and locks
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(workers,)) as pool:
        while pending or running:
            for job in [job for job in pending if _ready(job, keys, finished)][:workers - len(running)]:
                pending.remove(job)
                on_start(job)
                running[pool.submit(_run_logged, job.work, job.log_file)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                error = future.exception()
                if error is not None:
                    pending.clear()
                    _finish_running(running, on_done)
                    raise ConfigError(f"{job.label} failed: {error} (its output: {job.log_file})") from error
                finished.add(job.key)
                on_done(job, future.result())


def _ready(job: Job, keys: Sequence[str], finished: set[str]) -> bool:
    return all(need in finished or need not in keys for need in job.needs)


def _in_dependency_order(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` in their order, except that a job comes after the jobs it needs; ValueError when some
    wait on each other."""
    keys = [job.key for job in jobs]
    ordered: list[Job] = []
    done: set[str] = set()
    pending = list(jobs)
    while pending:
        job = next((job for job in pending if _ready(job, keys, done)), None)
        if job is None:
            raise ValueError(f"jobs {[job.key for job in pending]} wait on each other")
        pending.remove(job)
        ordered.append(job)
        done.add(job.key)
    return ordered


def _finish_running(running: dict[Future[Any], Job], on_done: Callable[[Job, Any], None]) -> None:
    """Waits for the runs under way after a failure; the ones that succeed are reported as usual."""
    if running:
        print(f"waiting for the {len(running)} run(s) under way to finish", flush=True)
    for future, job in running.items():
        if future.exception() is None:
            on_done(job, future.result())


def _start_worker(workers: int) -> None:
    """A worker's share of the threads torch would use (also for the processes it starts: a pretraining
    stage of its own), and no progress bars (its output goes to log files)."""
    import torch

    threads = max(1, torch.get_num_threads() // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(threads)


def _run_logged(work: Callable[[], Any], log_file: Path) -> Any:
    """``work()`` with this worker's standard output and error (file descriptors 1 and 2, so the processes
    it starts too) appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(log_file, "a", encoding="utf-8") as stream:
        for fd in saved:
            os.dup2(stream.fileno(), fd)
        try:
            return work()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
