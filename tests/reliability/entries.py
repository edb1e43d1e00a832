"""Programs the reliability tests run in other processes (a helper, not a test module): as scripts in
subprocesses, or through ``main(argv)`` in forked ones (nan-on-one-rank: tests/launch.py's
``run_main_in_two_processes``).

    python entries.py slow-checkpoint READY NTH -- FINETUNE_ARGS...
        scripts/finetune.py, except that the NTH ``torch.save`` (counting from 1; a training checkpoint is
        two saves, ``checkpoint_EPOCH.pth`` then ``checkpoint.pth``) writes half of its bytes into the
        temporary file, creates the file READY and blocks until the process is killed.
    python entries.py slow-cache READY NTH -- PRECOMPUTE_ARGS...
        scripts/precompute_proposals.py (pass ``--workers 1``), likewise for the NTH proposal cache entry.
    python entries.py nan-on-one-rank OUT_DIR MODE
        a small Trainer run (a linear model fitting 16 numbers, batch 1 per process, 2 epochs, on_nonfinite
        MODE) in which only the process of rank 1 gets a NaN loss, at its third batch. Each process writes
        ``OUT_DIR/rank{i}.json``: skipped batches, steps, final parameters, or the error it stopped with.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: A blocked process waits at most this long for its kill, so a failing test leaves no orphan behind.
MAX_BLOCK_SECONDS = 300


def _signal_and_block(ready: Path) -> None:
    """Creates ``ready`` atomically (rename), then sleeps until killed."""
    tmp = ready.with_name(ready.name + ".partial")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, ready)
    time.sleep(MAX_BLOCK_SECONDS)
    os._exit(3)


def _write_half(handle: IO[bytes], data: bytes, ready: Path) -> None:
    handle.write(data[: len(data) // 2])
    handle.flush()
    os.fsync(handle.fileno())
    _signal_and_block(ready)


def slow_checkpoint(ready: Path, nth: int, argv: list[str]) -> int:
    """scripts/finetune.py whose ``nth`` torch.save stops half-way and waits to be killed."""
    import torch

    from detr_ssl.cli import finetune
    from detr_ssl.cli.common import run_main

    original: Callable[..., Any] = torch.save
    calls = 0

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls != nth:
            original(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        original(obj, buffer, *args, **kwargs)
        _write_half(f, buffer.getvalue(), ready)

    torch.save = save
    return run_main(finetune.main, argv)


def slow_cache(ready: Path, nth: int, argv: list[str]) -> int:
    """scripts/precompute_proposals.py whose ``nth`` cache entry write stops half-way and waits to be killed."""
    from detr_ssl.cli import precompute_proposals
    from detr_ssl.cli.common import run_main
    from detr_ssl.proposals import cache

    original = cache._atomic_write
    entries = 0

    def atomic_write(path: Path, data: bytes, prefix: str) -> None:
        nonlocal entries
        if path.suffix == cache.ENTRY_SUFFIX:
            entries += 1
            if entries == nth:  # the same temporary file name the real writer would use
                with open(path.parent / f"{prefix}partial.tmp", "wb") as handle:
                    _write_half(handle, data, ready)
        original(path, data, prefix)

    cache._atomic_write = atomic_write
    return run_main(precompute_proposals.main, argv)


def nan_on_one_rank(out_dir: Path, mode: str) -> int:
    """Trains a linear model on two processes; only rank 1 sees a NaN loss (its third batch)."""

    import torch
    from accelerate import Accelerator
    from torch import Tensor, nn

    from detr_ssl.config import OptimConfig, RunConfig
    from detr_ssl.engine.trainer import NonFiniteLossError, Trainer
    from detr_ssl.losses.output import LossOutput
    from toy_training import Numbers

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index

    class NanOnRankOne:
        calls = 0

        def compute_loss(self, model: nn.Module, batch: Tensor) -> LossOutput:
            self.calls += 1
            fit = ((model(batch) - 2 * batch) ** 2).mean()
            if rank == 1 and self.calls == 3:
                fit = fit * float("nan")
            return LossOutput(fit, {"loss_fit": fit.detach()})

    torch.manual_seed(0)
    run = RunConfig(output_dir=out_dir / "run", log_every=1, checkpoint_every=100, on_nonfinite=mode)  # type: ignore[arg-type]
    optim = OptimConfig(epochs=2, lr=0.01, lr_backbone=0.0, batch_size=1, lr_drop=100)
    trainer = Trainer(accelerator, nn.Linear(1, 1), NanOnRankOne(), Numbers(16), optim, run,  # type: ignore[arg-type]
                      collate_fn=torch.stack)
    result: dict[str, Any] = {"rank": rank, "world_size": accelerator.num_processes, "error": None}
    try:
        trainer.fit()
    except NonFiniteLossError as exc:
        result["error"] = str(exc)
    model = accelerator.unwrap_model(trainer.model)
    result.update(skipped=trainer.skipped_batches, step=trainer.progress.step,
                  params=[float(v) for p in model.parameters() for v in p.detach().flatten()])
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    # Shut the process group down before exiting: left to the interpreter's teardown after a stopped run,
    # gloo's threads were once seen to abort the process ("terminate called without an active exception").
    accelerator.end_training()
    return 0


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "nan-on-one-rank":
        return nan_on_one_rank(Path(rest[0]), rest[1])
    ready, nth, separator, *program_args = rest
    assert separator == "--", "usage: entries.py COMMAND READY NTH -- ARGS..."
    programs = {"slow-checkpoint": slow_checkpoint, "slow-cache": slow_cache}
    return programs[command](Path(ready), int(nth), program_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
