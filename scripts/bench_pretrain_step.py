#!/usr/bin/env python
"""Benchmark one DetReg pretraining step, split into its phases; target: teacher crop path <= 25% of the step.

Prints a table per model size and writes ``bench_results/pretrain_step.json``.

Set-up, as ``scripts/pretrain.py --task detreg`` builds it (`detr_ssl.cli.pretrain.pretrain`): the config
comes from `parse_pretrain_args` (``--preset``, ``--model-size``), the model, frozen teacher and proposal
dataset from `DetRegTask`, the optimiser from `build_optimizer`. Images: the first ``--num-images`` demo
photos (``demo_unlabeled_images()``, real photos of up to 256 px), copied into a temporary folder whose
proposal cache is filled first with `detr_ssl.proposals.precompute` (the run then requires the cache, as
a real run with ``--require-cache`` would). Batches are the dataset's augmented samples, collated.

Phases of one step, each timed with the library functions `DetRegTask.compute_loss` calls, in its order:

- ``proposals``: the batch's proposal boxes read from the cache (`ProposalProvider.boxes` per image, as
  the dataset does after decoding an image; normally inside a DataLoader worker, which also cuts the
  teacher crops out of the image, before augmentation, as released);
- ``crops``: `DetRegTask.teacher_inputs`: the crops to float, the released per-crop augmentation (jitter,
  greyscale, blur, batched), normalisation;
- ``teacher``: the frozen teacher embedding every crop (one forward);
- ``model forward``: the detector plus embedding head;
- ``loss``: the set criterion (Hungarian matching + terms) and the embedding L1 (`detreg_loss`);
- ``backward + step``: back-propagation, gradient clipping, the AdamW step.

The *teacher crop path* is ``crops + teacher``; shares are of the sum of all phases. The peer, timed in
the same run interleaved run by run, is the unsplit step (``task.compute_loss`` + backward + step): the
phased step must give the same loss (checked) and take about as long (``phases / unsplit``).
Time: median over ``--repeats`` steps after ``--warmup``, cycling through ``--batches`` batches.
``bg load`` is the share of the machine other processes used meanwhile.

Example: ``python scripts/bench_pretrain_step.py`` (about a minute on 2 cores);
``--model-size tiny r50`` adds the ResNet-50 model (a few minutes).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from PIL import Image

from detr_ssl.benchmarking import backward_and_step, environment, markdown_table, sync, time_interleaved, write_json
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.config import PretrainConfig, with_backbone_init
from detr_ssl.datasets import ImageFolderDataset, collate_detection, demo_unlabeled_images, make_train_transforms
from detr_ssl.datasets.collate import Batch
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.proposals import ProposalDataset, precompute
from detr_ssl.tasks.detreg import DetRegModel, DetRegTask, detreg_loss

PHASES = ("proposals", "crops", "teacher", "model forward", "loss", "backward + step")
TEACHER_CROP_PATH = ("crops", "teacher")
TARGET_SHARE = 0.25
#: Background load (share of the machine used by other processes) above which the output warns.
NOTE_LOAD = 0.2


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


def measure(bench: Bench, device: torch.device, warmup: int, repeats: int) -> dict[str, object]:
    """Phase times of the phased step and whole-step times of both steps, interleaved run by run."""
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
        "target_share": TARGET_SHARE,
        "meets_target": crop_path / total <= TARGET_SHARE,
        "phased_step_ms": statistics.median(times["phased"]),
        "unsplit_step_ms": statistics.median(times["unsplit"]),
        "phases_vs_unsplit": total / statistics.median(times["unsplit"]),
        "background_load": load,
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


def format_table(size: str, result: dict[str, object]) -> str:
    phases, shares = result["phase_ms"], result["phase_share"]
    rows = [[phase + (" *" if phase in TEACHER_CROP_PATH else ""), f"{phases[phase]:.1f}", f"{shares[phase]:.0%}"]
            for phase in PHASES]
    rows.append(["**teacher crop path** (crops + teacher)", f"{result['teacher_crop_path_ms']:.1f}",
                 f"**{result['teacher_crop_path_share']:.0%}** (target <= {TARGET_SHARE:.0%})"])
    rows.append(["sum of phases", f"{result['phases_sum_ms']:.1f}", "100%"])
    rows.append(["peer: unsplit step (compute_loss + backward + step)", f"{result['unsplit_step_ms']:.1f}",
                 f"phases / unsplit = {result['phases_vs_unsplit']:.2f}"])
    load = "n/a" if result["background_load"] is None else f"{result['background_load']:.0%}"
    title = (f"{size} ({result['backbone']}): batch {result['batch_size']}, {result['crops_per_step']:.0f} crops of "
             f"{result['crop_size']} px = {result['teacher_vs_detector_pixels']:.1f}x the detector's pixels, "
             f"teacher {result['teacher_dim']}-d, bg load {load}")
    return title + "\n" + markdown_table(["phase", "median ms", "share of step"], rows) + load_note(result)


def load_note(result: dict[str, object]) -> str:
    """A warning line when other processes used much of the machine during the timings."""
    load = result["background_load"]
    if load is None or load <= NOTE_LOAD:
        return ""
    note = f"\nnote: other processes used {load:.0%} of the CPU meanwhile, which inflates the times"
    if torch.get_num_threads() > 1:
        note += " (multi-threaded ops most: each waits for its descheduled threads; try --threads 1)"
    return note


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="What is measured, and how, is in the module docstring.")
    parser.add_argument("--model-size", nargs="+", choices=("tiny", "r50"), default=["tiny"],
                        help="model presets to run (default: tiny; r50 takes a few minutes)")
    parser.add_argument("--preset", choices=("demo", "paper"), default="demo",
                        help="pretraining preset: image sizes, batch size, learning rates (default demo: "
                             "short side 96-128)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: the preset's)")
    parser.add_argument("--crop-size", type=int, default=None,
                        help="side of the teacher's crops (default: the preset's, 128)")
    parser.add_argument("--num-images", type=int, default=16, help="demo photos to use (at most 32; default 16)")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches the steps cycle through (default 4)")
    parser.add_argument("--repeats", type=int, default=6, help="timed steps per method (default 6)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("bench_results/pretrain_step.json"),
                        help="JSON file to write (default bench_results/pretrain_step.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_step_") as tmp:
        images = copy_photos(Path(tmp) / "images", args.num_images)
        for size in args.model_size:
            cfg = pretrain_config(args, size, images, Path(tmp) / f"run-{size}")
            bench = build_bench(cfg, args.batches, device)
            loss = check_same_loss(bench, args.seed)
            result = {**describe(bench), "loss": loss, **measure(bench, device, args.warmup, args.repeats)}
            print(format_table(size, result), flush=True)
            results[size] = result
    write_json(args.output, {"environment": environment(device), "args": vars(args) | {"output": str(args.output)},
                             "results": results})


if __name__ == "__main__":
    main()
