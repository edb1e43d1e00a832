"""What every command-line entry point shares: one-line errors and the Accelerator set-up.

The command-line modules import torch (and what imports it: accelerate, the models, the datasets) inside
the functions that run the job, never at module level, so that ``--help`` answers without importing it
(``tests/scripts/test_startup.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from detr_ssl.config import RunConfig
from detr_ssl.errors import DetrSslError, original_message

if TYPE_CHECKING:
    from accelerate import Accelerator


def run_main(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs ``main``; a user-fixable problem (DetrSslError) becomes ``error: ...`` on stderr and exit
    status 2 instead of a traceback."""
    try:
        return main(list(sys.argv[1:] if argv is None else argv))
    except DetrSslError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        # Free the failed run now. An error re-raised from a DataLoader worker sits in a reference cycle
        # with its traceback (and through it the loader and its worker processes); left to the garbage
        # collector, the loader's shutdown then stalls 5 s per worker.
        exc.__traceback__ = None
        return 2


def one_line(exc: BaseException) -> str:
    """The user-facing message of ``exc``, without the traceback of the DataLoader worker that raised it."""
    return original_message(str(exc).strip())


def make_accelerator(run: RunConfig, grad_accum_steps: int = 1, find_unused_parameters: bool = False) -> Accelerator:
    """The run's Accelerator. Data order comes from a sampler seeded with (seed, epoch), so it is the
    same on every process, after every resume, and for any number of workers."""
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    return Accelerator(
        cpu=run.cpu,
        mixed_precision=run.mixed_precision,
        gradient_accumulation_steps=grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=run.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
