"""How tests start a script: in this process with its output captured, in two CPU processes as users launch
it, or its entry point in two forked CPU processes set up as that launch sets them up; and how they run a
function in two forked CPU processes joined in a gloo process group.

``accelerate launch --cpu --num_processes 2`` starts ONE process (Accelerate's simple launcher ignores the
count on CPU). ``--multi_gpu`` goes through torchrun, whose processes fall back to gloo without CUDA; the
script's own ``--cpu`` keeps them on the CPU where a GPU exists. Scripts print ``(N processes)`` so a test
can check that both really ran.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detr_ssl.cli.common import run_main


def run_captured(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    """(exit status, stdout) of an entry point's ``main`` run here as its script would run it."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run_main(main, argv)
    return code, stdout.getvalue()


TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
"""Prefix of the command line; append the script and its flags, including ``--cpu``."""


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now: a rendezvous of its own for each launch."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FORKED_GLOO = pytest.mark.skipif(not dist.is_available() or "fork" not in mp.get_all_start_methods(),
                                 reason="needs torch.distributed (gloo) and the fork start method")
"""Skip marker for tests that use ``run_in_two_processes`` or ``run_main_in_two_processes``."""


def _joined_worker(rank: int, worker: Callable[..., None], store: str, args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def run_in_two_processes(worker: Callable[..., None], tmp_path: Path, *args: Any) -> None:
    """Call ``worker(rank, *args)`` in two forked CPU processes (one torch thread each) joined in a gloo
    process group whose file store is ``tmp_path / "store"``; the group is destroyed when the worker returns
    or raises. Returns once both have finished; a worker's exception (or a process that dies) is raised here,
    with the worker's traceback, so the test fails. Mark the test ``@FORKED_GLOO``."""
    mp.start_processes(_joined_worker, args=(worker, str(tmp_path / "store"), args), nprocs=2, start_method="fork")


def _script_worker(rank: int, main: Callable[[list[str]], int], argv: list[str], port: int, folder: str) -> None:
    from accelerate.state import AcceleratorState, GradientState

    # What torchrun gives each process it starts; one intra-op thread, as OMP_NUM_THREADS=1 gives a launch.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    # The fork copied this test process's Accelerate state (single-process, if a test here built an
    # Accelerator): forget it, so that the entry point's Accelerator joins the two processes from the
    # environment as in a launched script.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    code, stdout = run_captured(main, argv)
    Path(folder, f"rank{rank}.stdout").write_text(stdout)
    if code != 0:
        raise RuntimeError(f"process {rank}: exit status {code} (its one-line error is on stderr)")


def run_main_in_two_processes(main: Callable[[list[str]], int], argv: list[str], tmp_path: Path,
                              timeout_s: float = 600) -> str:
    """Runs an entry point's ``main(argv)`` in two forked CPU processes, each set up as torchrun sets up the
    processes of a ``TWO_CPU_PROCESSES`` launch (rank, world size, a rendezvous port of their own); returns
    what the main process printed. A failure in either process is raised here, with its traceback; processes
    still running after ``timeout_s`` (one waiting for the other) are killed and the test fails.

    Against a launch, this saves every process an interpreter's start-up and imports: for tests of what a
    run does in two processes. Tests of the launch itself (tests/scripts/test_pretrain_cli.py, the training
    runs of tests/reliability/test_distributed_equality.py) keep ``TWO_CPU_PROCESSES``. Pass the script's
    ``--cpu``; mark the test ``@FORKED_GLOO``."""
    # Imported here once, not in each process: Accelerate, and torch._dynamo, which torch imports when the
    # first optimizer is built.
    importlib.import_module("accelerate")
    importlib.import_module("torch._dynamo")
    context = mp.start_processes(_script_worker, args=(main, list(argv), free_port(), str(tmp_path)), nprocs=2,
                                 start_method="fork", join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, f"the two processes of {argv[:3]} ran past {timeout_s} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return (tmp_path / "rank0.stdout").read_text()
