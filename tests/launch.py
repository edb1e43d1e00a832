"""How tests start a script in two CPU processes.

``accelerate launch --cpu --num_processes 2`` starts ONE process (Accelerate's simple launcher ignores the
count on CPU). ``--multi_gpu`` goes through torchrun, whose processes fall back to gloo without CUDA; the
script's own ``--cpu`` keeps them on the CPU where a GPU exists. Scripts print ``(N processes)`` so a test
can check that both really ran.
"""

from __future__ import annotations

import sys

TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
"""Prefix of the command line; append the script and its flags, including ``--cpu``."""
