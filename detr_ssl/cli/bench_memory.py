"""The measurement code of ``scripts/bench_memory.py`` (what it measures, and how, is in its docstring): peak
memory and time of a training step with and without encoder activation checkpointing."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import torch

from detr_ssl.bench_cli import BenchRun
from detr_ssl.benchmarking import peak_rss_in_fresh_process, time_interleaved
from detr_ssl.cli.bench_compile import build_detector, make_batch, make_train_step

VARIANTS = {"plain": False, "checkpointed": True}


def step_setup(model_size: str, batch_size: int, image_size: int, checkpointing: bool,
               seed: int) -> Callable[[], float]:
    """One training step (forward + loss + backward) of a freshly built model, warmed up once; its gradients
    are freed again, so that a measured step allocates them."""
    model, criterion = build_detector(model_size, seed, encoder_checkpointing=checkpointing)
    step = make_train_step(model, criterion, make_batch(batch_size, image_size, seed), optimizer=None)
    step()
    model.zero_grad(set_to_none=True)
    return step


def bench(model_size: str, batch_size: int, args: argparse.Namespace, run: BenchRun) -> dict[str, object]:
    """Peak memory and step time (recorded in ``run``) of the plain and the checkpointed model for one
    (size, batch)."""
    steps = {name: step_setup(model_size, batch_size, args.image_size, flag, args.seed)
             for name, flag in VARIANTS.items()}
    times, load = time_interleaved(steps, warmup=0, repeats=args.repeats)  # step_setup warmed them up
    run.record(f"{model_size} batch {batch_size}", times, load)
    result: dict[str, object] = {"model_size": model_size, "batch_size": batch_size, "image_size": args.image_size}
    for name, flag in VARIANTS.items():
        result[f"{name}_ms"] = statistics.median(times[name])
        result[f"{name}_peak_mib"] = None if args.no_memory else peak_rss_in_fresh_process(
            step_setup, model_size, batch_size, args.image_size, flag, args.seed, threads=torch.get_num_threads())
    result["time_ratio"] = result["checkpointed_ms"] / result["plain_ms"]
    plain, checkpointed = result["plain_peak_mib"], result["checkpointed_peak_mib"]
    result["memory_ratio"] = checkpointed / plain if plain and checkpointed is not None else None
    print(f"  done {model_size} batch {batch_size}", file=sys.stderr, flush=True)
    return result
