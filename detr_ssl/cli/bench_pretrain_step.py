"""The measurement code of ``scripts/bench_pretrain_step.py`` (what it measures, and how, is in its
docstring): one DetReg pretraining step, split into its phases."""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from PIL import Image

from detr_ssl.bench_cli import BenchRun
from detr_ssl.benchmarking import backward_and_step, sync, time_interleaved
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.config import PretrainConfig, with_backbone_init
from detr_ssl.datasets import ImageFolderDataset, collate_detection, demo_unlabeled_images, make_train_transforms
from detr_ssl.datasets.collate import Batch
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.proposals import ProposalDataset, precompute
from detr_ssl.tasks.detreg import DetRegModel, DetRegTask, detreg_loss

PHASES = ("proposals", "crops", "teacher", "model forward", "loss", "backward + step")
TEACHER_CROP_PATH = ("crops", "teacher")
#: The teacher crop path's largest share of a step, per preset: the paper recipe's teacher embeds 128 px crops
#: for a large detector; the demo's tiny detector makes any teacher a larger share.
TARGET_SHARE = {"paper": 0.25, "demo": 0.40}


@dataclass
class StepInputs:
    """One collated batch and what the proposal phase reads for it: each image's path and decoded pixels."""

    batch: Batch
    paths: list[Path]
    images: list[Image.Image]


@dataclass
class Bench:
    """Everything one model size needs: task (config, teacher, criterion), model, optimiser, data."""

    task: DetRegTask
    model: DetRegModel
    optimizer: torch.optim.Optimizer
    dataset: ProposalDataset
    inputs: list[StepInputs]


def pretrain_config(args: argparse.Namespace, size: str, images: Path, output: Path) -> PretrainConfig:
    """The DetReg config ``scripts/pretrain.py`` would run with, as `DetRegTask.configure` enforces it."""
    argv = ["--task", "detreg", "--preset", args.preset, "--model-size", size, "--data", str(images),
            "--output-dir", str(output), "--require-cache", "--seed", str(args.seed)]
    for flag, value in (("--batch-size", args.batch_size), ("--crop-size", args.crop_size)):
        if value is not None:
            argv += [flag, str(value)]
    if args.preset == "paper":  # the recipe needs a SwAV ResNet-50 file; random weights time the same
        weights = output / "random_resnet50.pth"
        output.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
        argv += ["--teacher-checkpoint", str(weights), "--backbone-init", str(weights)]
    cfg = parse_pretrain_args(argv)
    return DetRegTask.configure(replace(cfg, model=with_backbone_init(cfg.model, cfg.backbone_init)))


def copy_photos(folder: Path, count: int) -> Path:
    """The first ``count`` demo photos in ``folder`` (the pretraining image folder)."""
    photos = sorted(demo_unlabeled_images().iterdir())[:count]
    folder.mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    return folder


def build_bench(cfg: PretrainConfig, num_batches: int, device: torch.device) -> Bench:
    """Model, teacher, optimiser and proposal dataset as `pretrain` builds them, the proposal cache filled
    first, and ``num_batches`` augmented batches."""
    torch.manual_seed(cfg.run.seed)
    task = DetRegTask(cfg)
    with warnings.catch_warnings():  # the demo presets have no SwAV file: the backbone copy is the teacher
        warnings.simplefilter("ignore", UserWarning)
        model = task.build_model().to(device)
    task.teacher.to(device)
    model.train()
    images = ImageFolderDataset(cfg.data.data)
    dataset = task.build_dataset(images, make_train_transforms(cfg.data.train_scales, cfg.data.max_size, cfg.data.crop))
    summary = precompute(images.image_paths, dataset.provider.cache, workers=1, progress=False)
    if summary.failed:
        raise RuntimeError(f"proposal precomputation failed: {summary}")
    inputs = make_inputs(dataset, cfg.optim.batch_size, num_batches, device)
    return Bench(task, model, build_optimizer(model, cfg.optim), dataset, inputs)


def make_inputs(dataset: ProposalDataset, batch_size: int, num_batches: int, device: torch.device) -> list[StepInputs]:
    """Up to ``num_batches`` batches of distinct images in a random order (the global generator's)."""
    order = torch.randperm(len(dataset)).tolist()
    groups = [order[start:start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]
    if not groups:
        raise SystemExit(f"--num-images ({len(dataset)}) must be at least the batch size ({batch_size})")
    images = dataset.images
    return [StepInputs(collate_detection([dataset[i] for i in group]).to(device),
                       [images.image_paths[i] for i in group], [images[i][0] for i in group])
            for group in groups[:num_batches]]


class PhaseClock:
    """Milliseconds per phase: ``lap(name)`` closes the phase that began at the previous lap."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.ms[phase] = (now - self._start) * 1e3
        self._start = now


def phased_loss(bench: Bench, step: StepInputs, lap: Callable[[str], None]) -> torch.Tensor:
    """The step's loss, phase by phase, with the library functions `DetRegTask.compute_loss` calls in its
    order (``lap`` after each phase); the proposals are read from the cache first, as the dataset does."""
    task, batch = bench.task, step.batch
    for path, image in zip(step.paths, step.images):
        bench.dataset.provider.boxes(path, image)
    lap("proposals")
    crops = task.teacher_inputs(batch)
    lap("crops")
    embeddings = list(task.teacher(crops).split([len(t["boxes"]) for t in batch.targets]))
    lap("teacher")
    output, predicted = bench.model(batch.images, batch.mask)
    lap("model forward")
    total = detreg_loss(task.criterion, output, predicted, batch.targets, embeddings,
                        task.options.embedding_layers, task.options.embedding_weight).total
    lap("loss")
    return total


def optimize(bench: Bench, total: torch.Tensor) -> None:
    """Backward, gradient clipping and the optimiser step, as the trainer does them."""
    backward_and_step(total, bench.optimizer, bench.task.config.optim.clip_max_norm)


def check_same_loss(bench: Bench, seed: int) -> float:
    """The phased loss must be the task's own (same batch, weights and dropout draws); returns it."""
    step = bench.inputs[0]
    computations = (lambda: phased_loss(bench, step, lambda _: None),
                    lambda: bench.task.compute_loss(bench.model, step.batch).total)
    losses = []
    for compute in computations:
        torch.manual_seed(seed)
        losses.append(float(compute().detach()))
    if abs(losses[0] - losses[1]) > 1e-5 * max(1.0, abs(losses[1])):
        raise SystemExit(f"the phased step computes another loss than DetRegTask.compute_loss: {losses}")
    return losses[1]


def measure(bench: Bench, device: torch.device, warmup: int, repeats: int, run: BenchRun,
            label: str, preset: str) -> dict[str, object]:
    """Phase times of the phased step and whole-step times of both steps, interleaved run by run (recorded in
    ``run`` under ``label``), and whether the teacher crop path stays within ``preset``'s target share."""
    phase_times: list[dict[str, float]] = []
    phased_inputs, unsplit_inputs = itertools.cycle(bench.inputs), itertools.cycle(bench.inputs)

    def phased() -> None:
        clock = PhaseClock(device)
        optimize(bench, phased_loss(bench, next(phased_inputs), clock.lap))
        clock.lap("backward + step")
        phase_times.append(clock.ms)

    def unsplit() -> None:
        optimize(bench, bench.task.compute_loss(bench.model, next(unsplit_inputs).batch).total)

    times, load = time_interleaved({"phased": phased, "unsplit": unsplit}, warmup, repeats, device)
    run.record(label, times, load)
    timed = phase_times[warmup:]
    phases = {phase: statistics.median(run[phase] for run in timed) for phase in PHASES}
    total = sum(phases.values())
    crop_path = sum(phases[phase] for phase in TEACHER_CROP_PATH)
    return {
        "phase_ms": phases,
        "phase_share": {phase: ms / total for phase, ms in phases.items()},
        "phases_sum_ms": total,
        "teacher_crop_path_ms": crop_path,
        "teacher_crop_path_share": crop_path / total,
        "teacher_crop_path": list(TEACHER_CROP_PATH),
        "target_share": TARGET_SHARE[preset],
        "meets_target": crop_path / total <= TARGET_SHARE[preset],
        "phased_step_ms": statistics.median(times["phased"]),
        "unsplit_step_ms": statistics.median(times["unsplit"]),
        "phases_vs_unsplit": total / statistics.median(times["unsplit"]),
        "phase_runs_ms": timed,
    }


def describe(bench: Bench) -> dict[str, object]:
    """What a step holds: images, their padded size, proposals (= crops), and how many pixels the teacher
    sees (all crops) per pixel the detector sees (the padded batch)."""
    batches = [step.batch for step in bench.inputs]
    crops = [sum(len(t["boxes"]) for t in batch.targets) for batch in batches]
    side = bench.task.options.crop_size
    return {
        "batch_size": len(batches[0]),
        "padded_hw": [list(batch.images.shape[-2:]) for batch in batches],
        "crops_per_step": statistics.mean(crops),
        "crop_size": side,
        "teacher_vs_detector_pixels": statistics.mean(count * side**2 / batch.images[:, 0].numel()
                                                      for count, batch in zip(crops, batches)),
        "teacher_dim": bench.task.teacher.dim,
        "backbone": bench.task.config.model.backbone,
    }




def bench_sizes(args: argparse.Namespace, run: BenchRun) -> dict[str, dict[str, object]]:
    """Per ``--model-size``: what a step holds, its loss and its phase and step times."""
    device = torch.device(args.device)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_step_") as tmp:
        images = copy_photos(Path(tmp) / "images", args.num_images)
        for size in args.model_size:
            cfg = pretrain_config(args, size, images, Path(tmp) / f"run-{size}")
            bench = build_bench(cfg, args.batches, device)
            loss = check_same_loss(bench, args.seed)
            results[size] = {**describe(bench), "loss": loss,
                             **measure(bench, device, args.warmup, args.repeats, run, size, args.preset)}
            print(f"  done {size}", file=sys.stderr, flush=True)
    return results
