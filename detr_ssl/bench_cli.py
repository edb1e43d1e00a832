"""The argument parser and the JSON writer every ``scripts/bench_*.py`` shares; imports no torch.

A benchmark script builds its parser with :func:`bench_parser` (the common flags) and adds its own flags,
parses, and only then imports torch and the code it measures, so that ``--help`` answers at once. A
:class:`BenchRun` made right after parsing applies ``--threads``, collects every raw timing with the
background load seen while it was taken (:meth:`BenchRun.record`), and writes one JSON file
(:meth:`BenchRun.write`) with the machine, the library versions, the command line, the date and the results.
``scripts/bench_report.py`` renders the README's tables from such files (see :mod:`detr_ssl.bench_report`).

Background load is the share of the machine's CPU time that processes other than this one and its
finished children used meanwhile (from ``/proc/stat``; None off Linux). On a shared machine it says how far
to trust a timing; ratios between methods timed interleaved suffer less from it than absolute times.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from detr_ssl.atomic_io import atomic_write_json

#: Where a benchmark's JSON goes unless ``--output`` says otherwise (``docs/bench/`` holds the committed ones).
RESULTS_DIR = Path("bench_results")
#: Library versions every result records (distribution names; a missing one reads null).
LIBRARIES = ("torch", "torchvision", "numpy", "detr-ssl")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def bench_parser(name: str, doc: str, *, repeats: int | None, warmup: int | None = None, seed: int | None = 0,
                 memory: bool = False, device: bool = False, threads: bool = True) -> argparse.ArgumentParser:
    """The parser of ``scripts/bench_<name>.py`` with the flags every benchmark has; the script adds its own.

    Always ``--output`` (default ``bench_results/<name>.json``). With a default given: ``--repeats`` (timed
    runs per method), ``--warmup`` (untimed runs first), ``--seed``; a benchmark without timed repeats (an
    accuracy probe) passes None. ``threads`` adds ``--threads`` (torch's; a benchmark that runs no torch
    passes False), ``memory`` adds ``--no-memory`` (skip the peak-memory measurements), ``device`` adds
    ``--device`` (default cpu). The description is ``doc``'s first paragraph.
    """
    parser = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0],
                                     epilog=f"What is measured, and how: the docstring of scripts/bench_{name}.py.")
    if repeats is not None:
        parser.add_argument("--repeats", type=positive_int, default=repeats,
                            help=f"timed runs per method; the median is reported (default {repeats})")
    if warmup is not None:
        parser.add_argument("--warmup", type=non_negative_int, default=warmup,
                            help=f"untimed runs per method first (default {warmup})")
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, help=f"seed of the inputs and weights (default {seed})")
    if memory:
        parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    if device:
        parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    if threads:
        parser.add_argument("--threads", type=positive_int, default=None,
                            help="torch.set_num_threads for the measurements (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help=f"JSON file to write (default {RESULTS_DIR / f'{name}.json'}; "
                             f"docs/bench/{name}.json is the committed one behind the README)")
    return parser


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds so far: the whole machine's busy and total time, and this process's own (its finished
    children included)."""

    machine_busy: float
    machine_total: float
    own: float


def cpu_times() -> CpuTimes | None:
    """The machine's CPU seconds from ``/proc/stat`` and this process's; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
    except OSError:
        return None
    hertz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle + iowait
    return CpuTimes((sum(ticks) - idle) / hertz, sum(ticks) / hertz, own_cpu_seconds())


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def background_load(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """The share of the machine's CPU time between two :func:`cpu_times` that other processes used."""
    if before is None or after is None:
        return None
    others = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return max(0.0, others) / max(after.machine_total - before.machine_total, 1e-9)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(libraries: Sequence[str]) -> dict[str, str | None]:
    """Installed versions of the distributions ``libraries`` (read from their metadata, nothing imported)."""
    versions: dict[str, str | None] = {}
    for library in libraries:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[library] = None
    return versions


def machine(device: str = "cpu") -> dict[str, Any]:
    """The machine a result was measured on; ``threads`` is torch's when torch is loaded (every timing bench
    loads it), and ``gpu`` the device name when ``device`` is a CUDA device."""
    torch = sys.modules.get("torch")
    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads() if torch is not None else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch is not None:
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _json_safe(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


class BenchRun:
    """One run of ``scripts/bench_<name>.py``: what it measured, and the JSON file that ships it.

    Made right after parsing: applies ``--threads`` (importing torch then) and starts the whole-run
    background-load clock. ``argv`` is the script's arguments (default ``sys.argv[1:]``); the file records
    the command that reruns it.
    """

    def __init__(self, name: str, args: argparse.Namespace, argv: Sequence[str] | None = None) -> None:
        self.name = name
        self.args = args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.timings_ms: dict[str, dict[str, list[float]]] = {}
        self.background_load: dict[str, float | None] = {}
        threads = getattr(args, "threads", None)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self._started = datetime.now(timezone.utc)
        self._load_average = _load_average()
        self._cpu = cpu_times()

    @property
    def command(self) -> str:
        """The shell command that reruns this benchmark from the repository root."""
        return shlex.join(["python", f"scripts/bench_{self.name}.py", *self.argv])

    def record(self, label: str, times_ms: Mapping[str, Sequence[float]], load: float | None) -> None:
        """Keeps the raw times (ms per run, per method) of one measurement, under ``label``, and the
        background load seen while they were taken."""
        if label in self.timings_ms:
            raise ValueError(f"timings already recorded under {label!r}")
        self.timings_ms[label] = {method: [float(t) for t in times] for method, times in times_ms.items()}
        self.background_load[label] = load

    def payload(self, results: object, libraries: Sequence[str] = (), device: str = "cpu") -> dict[str, Any]:
        """Everything the JSON file holds; ``libraries`` adds versions beyond :data:`LIBRARIES`."""
        return {
            "bench": self.name,
            "command": self.command,
            "date": self._started.isoformat(timespec="seconds"),
            "duration_s": (datetime.now(timezone.utc) - self._started).total_seconds(),
            "machine": machine(device),
            "versions": library_versions(tuple(dict.fromkeys((*LIBRARIES, *libraries)))),
            "background_load": {"whole run": background_load(self._cpu, cpu_times()), **self.background_load},
            "load_average": {"before": self._load_average, "after": _load_average()},
            "args": {key: _json_safe(value) for key, value in vars(self.args).items()},
            "timings_ms": self.timings_ms,
            "results": results,
        }

    def write(self, results: object, libraries: Sequence[str] = (), device: str = "cpu") -> dict[str, Any]:
        """Writes :meth:`payload` to ``--output`` (atomically, creating the folder), says where, returns it."""
        payload = self.payload(results, libraries, device)
        atomic_write_json(self.args.output, payload, indent=2)
        print(f"wrote {self.args.output}")
        return payload


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (what the scripts print and the README shows)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(share: float | None) -> str:
    """A share as a whole percentage; n/a when unknown (a background load off Linux)."""
    return "n/a" if share is None else f"{share:.0%}"
