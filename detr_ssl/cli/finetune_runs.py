"""What the benchmark drivers (``scripts/fewshot_coco.py``, ``scripts/semisup.py``) share: how one of their
fine-tuning runs is configured, where it starts from, and when it counts as finished.

A benchmark is a sequence of ordinary `finetune` runs, each in its own folder. A run whose result file
exists is finished and is skipped on a rerun; an unfinished one resumes from its latest checkpoint
(``--resume auto``), so an interrupted benchmark continues where it stopped. Each run keeps that one
checkpoint and no older epoch file: a benchmark makes dozens of runs, and a second 100-200 MB file per run
(the optimizer's moments included) added up to gigabytes that nothing reads.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro

from detr_ssl.config import FINETUNE_PRESETS, DataConfig, FinetuneConfig, OptimConfig, RunConfig
from detr_ssl.datasets.coco_json import read_json
from detr_ssl.errors import ConfigError, DataError
from detr_ssl.models.config import model_preset

C = TypeVar("C")

BENCHMARK_KEEP_LAST = 1
"""Epoch checkpoints a benchmark's run keeps (`RunConfig.keep_last`): the latest, which is all a resume needs."""
RESUME_FLAGS = ("--resume", "auto", "--keep-last", str(BENCHMARK_KEEP_LAST))
"""The `pretrain` flags of a benchmark's pretraining run: continue from its folder's latest checkpoint,
keep only that one."""


@functools.cache
def _field_docs(config_cls: type) -> dict[str, str]:
    """Field name -> the docstring written under the field in ``config_cls``'s body, on one line."""
    classdef = ast.parse(textwrap.dedent(inspect.getsource(config_cls))).body[0]
    body = classdef.body if isinstance(classdef, ast.ClassDef) else []
    return {field.target.id: " ".join(doc.value.value.split()) for field, doc in zip(body, body[1:])
            if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}


def _finetune_help(config_cls: type, name: str) -> Any:
    """The tyro help of a `finetune` flag that a benchmark sets for all its runs: the docstring of field
    ``name`` of ``config_cls`` (a part of `FinetuneConfig`), so the flag is documented once, there."""
    return tyro.conf.arg(help=_field_docs(config_cls)[name])


@dataclass(frozen=True)
class TrainingOptions:
    """How every fine-tuning run of the benchmark trains; everything else follows the finetune preset."""

    preset: Literal["demo", "paper"] = FinetuneConfig.preset
    """Fine-tuning recipe (image sizes, learning rates): 'paper' (Deformable DETR) or 'demo' (tiny images)."""
    model_size: Literal["tiny", "r50"] = FinetuneConfig.model_size
    """Architecture preset of the detector."""
    # The `finetune` flags of the same name, with finetune's help and defaults (but a checkpoint every 10
    # epochs instead of every epoch).
    batch_size: Annotated[int, _finetune_help(OptimConfig, "batch_size")] = OptimConfig.batch_size
    num_workers: Annotated[int, _finetune_help(DataConfig, "num_workers")] = DataConfig.num_workers
    checkpoint_every: Annotated[int, _finetune_help(RunConfig, "checkpoint_every")] = 10
    max_steps: Annotated[int | None, _finetune_help(RunConfig, "max_steps")] = RunConfig.max_steps
    cpu: Annotated[bool, _finetune_help(RunConfig, "cpu")] = RunConfig.cpu
    jobs: int = 1
    """Runs side by side, in worker processes that share the CPU threads; a run that needs another's result
    waits for it. On a CPU, 2 finishes a set of small runs sooner than 1 (each run's output then goes to
    console.log in its folder)."""


#: The demo drivers' runs: the tiny model on the demo preset, no loader workers (the demo's epochs are a few
#: batches, which worker start-up would dominate), a checkpoint every 50 epochs (the runs take seconds
#: to a minute, and each checkpoint writes the optimizer state too: a save every few seconds cost a visible
#: share of them; an interrupted run still resumes from its last one), and two runs side by side.
DEMO_TRAINING = TrainingOptions(preset="demo", model_size="tiny", batch_size=4, num_workers=0, checkpoint_every=50,
                                jobs=2)

#: Where a run's output goes when it runs in a worker (``--jobs`` above 1).
CONSOLE_LOG = "console.log"


@dataclass(frozen=True)
class Init:
    """Where a fine-tuning run starts: a pretrained detector, a backbone only, or nothing (random)."""

    name: str
    pretrained: Path | None = None
    """Full checkpoint, loaded non-strictly (tensors whose shape differs, e.g. the class head, dropped)."""
    backbone: Path | None = None
    """Backbone-only weights (finetune's --backbone-init: frozen-BN ResNet)."""


@dataclass(frozen=True)
class RunData:
    """The COCO-format files one run trains and evaluates on."""

    train_json: Path
    train_images: Path
    val_json: Path
    val_images: Path


def parse_with_demo(config_cls: type[C], demo_default: Callable[[], C], argv: list[str]) -> C:
    """Parse ``argv`` into ``config_cls``; with ``--demo`` the defaults are ``demo_default()``'s."""
    default = demo_default() if "--demo" in argv else config_cls()
    return tyro.cli(config_cls, default=default, args=argv)


def check_single_process() -> None:
    """The runs follow each other in one process (or in each ``--jobs`` worker), and each `finetune` ends by
    destroying the process group, so a multi-process launch cannot work: say so instead of failing in the
    second run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("run the benchmark with plain `python` (one process): `accelerate launch` with several "
                          "processes is not supported")


def require_files(*paths: Path, hint: str) -> None:
    """`DataError` naming the first missing path, followed by ``hint``."""
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: not found; {hint}")


def check_positive(values: tuple[int, ...], flag: str) -> None:
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{flag} needs one or more positive integers, got {' '.join(map(str, values)) or 'none'}")


def finetune_config(options: TrainingOptions, data: RunData, init: Init, epochs: int, lr_drop: int,
                    output_dir: Path, seed: int | None = None) -> FinetuneConfig:
    """The `FinetuneConfig` of one benchmark run: the preset, then the benchmark's choices.

    It evaluates once, after the last epoch (``eval_every = epochs``), and resumes from ``output_dir``'s
    latest checkpoint when there is one. ``seed`` None keeps the preset's training seed.
    """
    base = FINETUNE_PRESETS[options.preset]()
    model = base.model
    if options.model_size != base.model_size:
        model = model_preset(options.model_size, train_backbone=base.model.train_backbone)
    return replace(
        base,
        model_size=options.model_size,
        model=model,
        pretrained=init.pretrained,
        backbone_init=init.backbone,
        data=replace(base.data, train_json=data.train_json, images=data.train_images, val_json=data.val_json,
                     val_images=data.val_images, num_workers=options.num_workers),
        optim=replace(base.optim, epochs=epochs, lr_drop=lr_drop, batch_size=options.batch_size),
        run=replace(base.run, output_dir=output_dir, seed=base.run.seed if seed is None else seed, resume="auto",
                    keep_last=BENCHMARK_KEEP_LAST, eval_every=epochs, checkpoint_every=options.checkpoint_every,
                    max_steps=options.max_steps, cpu=options.cpu),
    )


def finished(result_file: Path) -> Any | None:
    """The content of a finished run's result file, or None when the run has not finished."""
    return read_json(result_file) if result_file.is_file() else None


class RunProgressLog:
    """Prints one line when each run of a benchmark starts, is skipped, or ends (with its duration); runs
    may overlap (``--jobs``), so each is known by its label. Runs are numbered as they start or are
    skipped, unless the caller gives their ``number`` (a plan's stage number)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.started: dict[str, tuple[int, float]] = {}
        """label -> (its number, when it started)"""

    def start(self, label: str, detail: str = "", number: int | None = None) -> None:
        number = self._number(number)
        self.started[label] = (number, time.monotonic())
        print(f"[{number}/{self.total}] {label}{detail}: running", flush=True)

    def skip(self, label: str, summary: str = "", number: int | None = None) -> None:
        print(f"[{self._number(number)}/{self.total}] {label}: finished before, skipped{_parenthesised(summary)}",
              flush=True)

    def done(self, label: str, summary: str = "") -> None:
        number, started = self.started.pop(label)
        minutes = (time.monotonic() - started) / 60
        print(f"[{number}/{self.total}] {label}: done in {minutes:.1f} min{_parenthesised(summary)}", flush=True)

    def _number(self, given: int | None) -> int:
        self.count += 1
        return self.count if given is None else given


def _parenthesised(summary: str) -> str:
    return f" ({summary})" if summary else ""
