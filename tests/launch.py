"""How tests start a script: in this process with its output captured, or in two CPU processes; and how they
run a function in two forked CPU processes joined in a gloo process group.

``accelerate launch --cpu --num_processes 2`` starts ONE process (Accelerate's simple launcher ignores the
count on CPU). ``--multi_gpu`` goes through torchrun, whose processes fall back to gloo without CUDA; the
script's own ``--cpu`` keeps them on the CPU where a GPU exists. Scripts print ``(N processes)`` so a test
can check that both really ran.
"""

from __future__ import annotations

import contextlib
import io
import sys
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


FORKED_GLOO = pytest.mark.skipif(not dist.is_available() or "fork" not in mp.get_all_start_methods(),
                                 reason="needs torch.distributed (gloo) and the fork start method")
"""Skip marker for tests that use ``run_in_two_processes``."""


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
