"""The measurement code of ``scripts/bench_compile.py`` (what it measures, and how, is in its docstring): a
Deformable DETR training step, eager against ``torch.compile``. ``scripts/bench_memory.py`` reuses its
model, batch and step."""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from detr_ssl.bench_cli import BenchRun
from detr_ssl.benchmarking import backward_and_step, synthetic_detection_batch, time_interleaved
from detr_ssl.config import LossConfig, OptimConfig
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.losses import SetCriterion, build_criterion
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import DeformableDETR, build_model

NUM_CLASSES = 80
BOXES_PER_IMAGE = 3
CLIP_MAX_NORM = 0.1

Targets = list[dict[str, Tensor]]


def make_batch(batch_size: int, image_size: int, seed: int) -> tuple[Tensor, Tensor, Targets]:
    """Random images ``(B, 3, S, S)``, an all-valid mask and ``BOXES_PER_IMAGE`` random cxcywh boxes each."""
    return synthetic_detection_batch(batch_size, image_size, image_size, NUM_CLASSES, BOXES_PER_IMAGE, seed)


def build_detector(model_size: str, seed: int, **overrides: object) -> tuple[DeformableDETR, SetCriterion]:
    """The ``model_size`` preset (fields replaced by ``overrides``) with seeded weights, and its set loss."""
    torch.manual_seed(seed)
    return build_model(model_preset(model_size, **overrides), NUM_CLASSES), build_criterion(NUM_CLASSES, LossConfig())


def make_train_step(model: nn.Module, criterion: SetCriterion, batch: tuple[Tensor, Tensor, Targets],
                    optimizer: torch.optim.Optimizer | None) -> Callable[[], float]:
    """A closure running one training step on ``batch``; returns its loss. Without ``optimizer`` the step is
    forward + loss + backward only (the gradients are cleared first, so every call allocates them anew)."""
    images, mask, targets = batch
    model.train()

    def step() -> float:
        loss = criterion(model(images, mask), targets).total
        if optimizer is None:
            model.zero_grad(set_to_none=True)
            loss.backward()
        else:
            backward_and_step(loss, optimizer, CLIP_MAX_NORM)
        return float(loss.detach())

    return step


def bench_size(model_size: str, args: argparse.Namespace, run: BenchRun) -> dict[str, object]:
    """Compile time, steady-state step times (recorded in ``run``) and the first-step loss difference for
    one model size."""
    eager_model, criterion = build_detector(model_size, args.seed)
    compiled_model = copy.deepcopy(eager_model)
    compiled_model.compile(backend=args.backend, mode=args.mode)
    batch = make_batch(args.batch_size, args.image_size, args.seed)
    steps = {name: make_train_step(model, criterion, batch, build_optimizer(model, OptimConfig()))
             for name, model in (("eager", eager_model), ("compiled", compiled_model))}

    def timed(step: Callable[[], float]) -> tuple[float, float]:
        start = time.perf_counter()
        loss = step()
        return time.perf_counter() - start, loss

    eager_first_s, eager_loss = timed(steps["eager"])
    compile_steps = [timed(steps["compiled"]) for _ in range(args.compile_steps)]
    compiled_loss = compile_steps[0][1]
    times, load = time_interleaved(steps, args.warmup, args.repeats)
    run.record(model_size, times, load)
    eager_ms, compiled_ms = statistics.median(times["eager"]), statistics.median(times["compiled"])
    compile_s = sum(seconds for seconds, _ in compile_steps) - args.compile_steps * eager_ms / 1e3
    print(f"  done {model_size}", file=sys.stderr, flush=True)
    return {
        "model_size": model_size,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "compile_s": compile_s,
        "compiled_first_steps_s": [seconds for seconds, _ in compile_steps],
        "eager_first_step_s": eager_first_s,
        "eager_ms": eager_ms,
        "compiled_ms": compiled_ms,
        "speedup": eager_ms / compiled_ms,
        "first_step_loss": {"eager": eager_loss, "compiled": compiled_loss},
        "first_step_loss_diff": abs(compiled_loss - eager_loss),
    }
