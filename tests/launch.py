"""How tests start a script: in this process with its output captured, or in two CPU processes.

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
