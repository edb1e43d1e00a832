"""``scripts/compare_pretexts.py``: every pretraining method on one protocol, from unlabeled images to one table.

The plan (:mod:`detr_ssl.protocols.comparison`) pretrains every task on the same unlabeled images (the chain
backbone first; detector pretexts start from its export), then fine-tunes every method, random init and the
backbone-only baseline at every label fraction and seed on the folds and schedule of ``scripts/semisup.py``
(its code, not a copy). Each stage is its own run in its own folder, so a finished stage is skipped and an
unfinished one resumes from its checkpoint when the command is run again. Behind ``--launcher`` (e.g.
``accelerate launch --num_processes 8``) every stage is its own process (``... -m detr_ssl.cli.compare ...
--stage K``), and a cluster can run independent stages as separate jobs; without one, only the pretraining
stages are. With ``--jobs N``, N stages that do not wait on each other run side by side.

A pretraining stage also measures what it made: the k-NN probe of its backbone (every method) and the
class-agnostic recall of its own boxes (detector pretexts), and its wall time and peak memory.
``results.json``, ``results.md``, ``ap_vs_fraction.png`` come from :mod:`detr_ssl.cli.compare_report`.

Torch is imported only where a stage runs (start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import functools
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from detr_ssl.atomic_io import atomic_write_json
from detr_ssl.cli.common import run_main
from detr_ssl.cli.finetune_runs import (
    CONSOLE_LOG,
    DEMO_TRAINING,
    RESUME_FLAGS,
    Init,
    RunProgressLog,
    TrainingOptions,
    finished,
    parse_with_demo,
)
from detr_ssl.cli.pretrain import parse_pretrain_args, pretrain
from detr_ssl.cli.run_pool import Job, run_jobs
from detr_ssl.cli.semisup import SemiSupBenchmark, SemiSupConfig
from detr_ssl.config import PRETRAINED_FILE
from detr_ssl.datasets import demo_detection_dataset
from detr_ssl.errors import ConfigError
from detr_ssl.protocols import write_fraction
from detr_ssl.protocols.comparison import (
    FinetuneStage,
    Plan,
    PretrainStage,
    Stage,
    build_plan,
    chain_argv,
    init_paths,
)
from detr_ssl.protocols.schedule import labelled_images
from detr_ssl.tasks import all_tasks

STAGE_FILE = "stage.json"
"""Written last by a finished pretraining stage: its cost and measures."""


@dataclass(frozen=True)
class CompareConfig:
    """Pretrain every method on the same images, fine-tune each at every label fraction and seed, compare."""

    tasks: tuple[str, ...] | None = None
    """Pretext tasks to compare (default: every registered task)."""
    chain_backbone: str | None = "swav"
    """Backbone pretext whose export starts every detector pretext and is the backbone-only baseline
    ('None': detector pretexts start from random and there is no backbone baseline)."""
    unlabeled: Path | None = None
    """Images to pretrain on: a folder, or a COCO JSON whose labels are ignored (default: --train-json)."""
    train_json: Path | None = None
    val_json: Path | None = None
    images: Path | None = None
    """Folder of the training images."""
    val_images: Path | None = None
    """Folder of the validation images (default: --images)."""
    fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
    seeds: tuple[int, ...] = (42,)
    """Fold seeds (also each fine-tune's training seed)."""
    schedule: tuple[str, ...] = SemiSupConfig.schedule
    """Fine-tuning epochs per label fraction as FRACTION=EPOCHS (scripts/semisup.py's)."""
    lr_drop_at: float = SemiSupConfig.lr_drop_at
    pretrain_preset: Literal["demo", "paper"] = "paper"
    """Pretraining recipe of every task (each task's own preset of that name)."""
    pretrain_flags: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="TASK=FLAGS")] = ()
    """Extra pretraining flags of one task, e.g. swav='--epochs 40'."""
    launcher: str = ""
    """Command that runs each stage (e.g. 'accelerate launch --num_processes 8'); default: this Python."""
    output_dir: Path = Path("outputs/compare")
    demo: bool = False
    """The embedded demo set and a subset of methods that finishes in minutes on a CPU."""
    dry_run: bool = False
    """Print the plan (stages, what each needs, its optimizer steps) and stop."""
    stage: int | None = None
    """Run stage K of the plan only (its needs must have finished); for cluster jobs."""
    report: bool = False
    """Only write the report of what has finished."""
    training: Annotated[TrainingOptions, tyro.conf.OmitArgPrefixes] = TrainingOptions()


def demo_compare() -> CompareConfig:
    """Minutes on a CPU (the README has the measured time): SwAV (backbone baseline and chain), DetReg on it,
    PixPro; 3 seeds."""
    return CompareConfig(
        tasks=("swav", "detreg", "pixpro"), demo=True, fractions=(0.25, 0.5), seeds=(42, 43, 44),
        pretrain_preset="demo", schedule=("0.5=12",), output_dir=Path("outputs/demo-compare"),
        pretrain_flags=("swav=--epochs 40 --lr-drop 32 --crops.color-strength 0.5",
                        "detreg=--epochs 20 --lr-drop 16 --crop-size 64", "pixpro=--epochs 40 --lr-drop 32"),
        training=DEMO_TRAINING,
    )  # fmt: skip


def parse_compare_args(argv: list[str]) -> CompareConfig:
    return parse_with_demo(CompareConfig, demo_compare, argv)


def _task_flags(cfg: CompareConfig) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    for item in cfg.pretrain_flags:
        task, separator, text = item.partition("=")
        if not separator or task not in all_tasks():
            raise ConfigError(f"--pretrain-flags: expected TASK=FLAGS with a registered task, got {item!r}")
        flags.setdefault(task, []).extend(shlex.split(text))
    return flags


class Comparison:
    """One comparison: its plan, its data and the semi-supervised benchmark that runs its fine-tunes."""

    def __init__(self, cfg: CompareConfig) -> None:
        if cfg.demo:
            demo = demo_detection_dataset()
            cfg = replace(cfg, train_json=cfg.train_json or demo.train_json, val_json=cfg.val_json or demo.val_json,
                          images=cfg.images or demo.image_dir)
        self.cfg = cfg
        self.root = Path(cfg.output_dir)
        self.task_flags = _task_flags(cfg)
        tasks = cfg.tasks or tuple(sorted(all_tasks()))
        self.plan: Plan = build_plan(tasks, cfg.chain_backbone, cfg.fractions, cfg.seeds)
        self.finetuning = SemiSupBenchmark(SemiSupConfig(
            train_json=cfg.train_json, val_json=cfg.val_json, images=cfg.images, val_images=cfg.val_images,
            fractions=cfg.fractions, seeds=cfg.seeds, random_init=True, schedule=cfg.schedule,
            lr_drop_at=cfg.lr_drop_at, output_dir=self.root / "finetune", training=cfg.training))

    # -- pretraining ---------------------------------------------------------------------------------

    def pretrain_argv(self, stage: PretrainStage) -> list[str]:
        """The ``scripts/pretrain.py`` flags of a pretraining stage."""
        cfg = self.cfg
        unlabeled = cfg.unlabeled or cfg.train_json
        argv = ["--task", stage.task, "--preset", cfg.pretrain_preset, "--model-size", cfg.training.model_size,
                "--data", str(unlabeled), "--output-dir", str(stage.output_dir(self.root)), *RESUME_FLAGS]
        if unlabeled == cfg.train_json:
            argv += ["--image-dir", str(cfg.images)]
        builds_on = PretrainStage(stage.builds_on).output_dir(self.root) if stage.builds_on else None
        return argv + chain_argv(stage.task, builds_on) + self.task_flags.get(stage.task, [])

    def pretrain_steps(self, stage: PretrainStage) -> int:
        from detr_ssl.datasets import ImageFolderDataset

        config = parse_pretrain_args(self.pretrain_argv(stage))
        images = len(ImageFolderDataset(config.data.data, image_dir=config.data.image_dir))
        return config.optim.epochs * math.ceil(images / config.optim.batch_size)

    def finetune_steps(self, stage: FinetuneStage) -> int:
        epochs, _ = self.finetuning.epochs[stage.fraction]
        labelled = labelled_images(self.finetuning.num_images, stage.fraction)
        return epochs * math.ceil(labelled / self.cfg.training.batch_size)

    def stage_dir(self, stage: Stage) -> Path:
        """The folder a stage writes into."""
        if isinstance(stage, PretrainStage):
            return stage.output_dir(self.root)
        return self.root / "finetune" / stage.run_name

    def is_finished(self, stage: Stage) -> bool:
        if isinstance(stage, PretrainStage):
            return (self.stage_dir(stage) / STAGE_FILE).is_file()
        return finished(self.stage_dir(stage) / "metrics.json") is not None

    # -- running ---------------------------------------------------------------------------------------

    def run_stage(self, number: int) -> None:
        """Runs stage ``number`` in this process (and the processes a launcher started with it)."""
        stage = self.plan.stage(number)
        unfinished = [need.label for need in self.plan.needs(stage) if not self.is_finished(need)]
        if unfinished:
            raise ConfigError(f"stage {number} ({stage.label}) needs {', '.join(unfinished)} finished first")
        if isinstance(stage, PretrainStage):
            self._run_pretrain(stage)
        else:
            self._run_finetune(stage)

    def _run_pretrain(self, stage: PretrainStage) -> None:
        import torch

        from detr_ssl.cli.compare_report import pretrain_measures  # evaluation code, only where it runs

        started = time.monotonic()
        pretrain(parse_pretrain_args(self.pretrain_argv(stage)))
        if _is_main_process():
            out = stage.output_dir(self.root)
            record = {"task": stage.task, "builds_on": stage.builds_on, "wall_seconds": time.monotonic() - started,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                      "measures": pretrain_measures(self, stage, out / PRETRAINED_FILE)}
            atomic_write_json(out / STAGE_FILE, record)

    def _run_finetune(self, stage: FinetuneStage) -> None:
        pretrained, backbone = init_paths(stage.method, self.root / "pretrain")
        init = Init(stage.method.name, pretrained=pretrained, backbone=backbone)
        fold = write_fraction(self.cfg.train_json, self.root / "finetune" / "folds", stage.fraction, stage.seed)
        self.finetuning.train_one(stage.fraction, stage.seed, fold.json_path, init)

    def runs_in_driver(self, stage: Stage) -> bool:
        """Without a launcher, fine-tunes run in the driver's process (or its ``--jobs`` workers), as
        ``scripts/semisup.py`` runs them: a new interpreter per run would add seconds of start-up to each.
        A pretraining always gets a process of its own, so the peak memory it records is its own."""
        return isinstance(stage, FinetuneStage) and not self.cfg.launcher

    def describe(self) -> str:
        """The plan as printed by ``--dry-run``: one line per stage with what it needs and its steps."""
        lines, total = [], 0
        for number, stage in enumerate(self.plan.stages, start=1):
            steps = self.pretrain_steps(stage) if isinstance(stage, PretrainStage) else self.finetune_steps(stage)
            total += steps
            needs = [str(number) for number in self.plan.needed_numbers(stage)]
            state = "finished" if self.is_finished(stage) else "to run"
            lines.append(f"{number:>4}  {stage.label:<48} {steps:>8} steps  needs {','.join(needs) or '-':<6} {state}")
        lines.append(f"{len(self.plan.stages)} stages, {total} optimizer steps in all")
        return "\n".join(lines)


def _is_main_process() -> bool:
    """Rank 0 of a launcher's processes (the only one that measures and writes the stage record)."""
    return int(os.environ.get("RANK", "0")) == 0


def stage_command(cfg: CompareConfig, argv: list[str], number: int) -> list[str]:
    """The command line that runs stage ``number``: the launcher (default: this Python) with this module."""
    launcher = shlex.split(cfg.launcher) or [sys.executable]
    return [*launcher, "-m", "detr_ssl.cli.compare", *argv, "--stage", str(number)]


def compare(cfg: CompareConfig, argv: list[str]) -> dict[str, Any] | None:
    """Runs (or continues) the comparison described by ``cfg`` (parsed from ``argv``); returns the
    ``results.json`` content, or None for ``--dry-run`` and ``--stage``."""
    from detr_ssl.cli.compare_report import write_comparison_report

    comparison = Comparison(cfg)
    if cfg.dry_run:
        print(comparison.describe(), flush=True)
        return None
    if cfg.stage is not None:
        comparison.run_stage(cfg.stage)
        return None
    if not cfg.report:
        run_stages(comparison, argv)
    return write_comparison_report(comparison)


def run_stages(comparison: Comparison, argv: list[str]) -> None:
    """Every unfinished stage of the plan, ``--jobs`` at a time, each once the stages it needs have finished."""
    stages = comparison.plan.stages
    progress = RunProgressLog(len(stages))
    jobs = []
    for number, stage in enumerate(stages, start=1):
        if comparison.is_finished(stage):
            progress.skip(stage.label, number=number)
            continue
        needs = tuple(str(number) for number in comparison.plan.needed_numbers(stage))
        jobs.append(Job(str(number), stage.label, functools.partial(run_stage_job, comparison, argv, number),
                        comparison.stage_dir(stage) / CONSOLE_LOG, needs))
    run_jobs(jobs, comparison.cfg.training.jobs, lambda job: progress.start(job.label, number=int(job.key)),
             lambda job, _: progress.done(job.label))


def run_stage_job(comparison: Comparison, argv: list[str], number: int) -> None:
    """Stage ``number``: in this process (a fine-tune without a launcher), else as a process of its own."""
    if comparison.runs_in_driver(comparison.plan.stage(number)):
        comparison.run_stage(number)
        return
    result = subprocess.run(stage_command(comparison.cfg, argv, number), check=False)
    if result.returncode != 0:
        raise ConfigError(f"stage {number} exited with status {result.returncode}; rerun to resume it")


def main(argv: list[str]) -> int:
    compare(parse_compare_args(argv), argv)
    return 0


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli())
