#!/usr/bin/env python
"""Benchmark the fine-tuning data pipeline against the model's training step: is the loader ever the bottleneck?

Prints a table and writes ``bench_results/dataloader.json``.

Data: a generated COCO folder (the demo shape-detection set, ``demo_detection_dataset``, rendered at
``--image-size`` into a temporary folder and re-encoded as JPEG, like COCO's files). Everything else is
built as ``scripts/finetune.py`` builds it: the config from `parse_finetune_args` (``--preset demo``:
short side 96-128 and batch 4; ``--preset paper``: short side 480-800, random crops and batch 2), the
training set and its augmentation from `detr_ssl.cli.finetune.load_datasets`, the model and its loss from
`build_supervised`, the optimiser from `build_optimizer`. The loader is the trainer's: per-sample seeded
augmentation (`SeededAugmentation`), shuffled, `collate_detection`.

What is measured, and how:

- ``loader``: images/s of one pass over the training set with ``--workers`` worker processes, the first
  batch excluded (worker start-up); median over ``--repeats`` passes after ``--warmup``.
- ``model step``: the training step on loaded batches (the task's loss, backward, gradient clipping, the
  AdamW step), cycling through ``--step-batches`` batches; median ms over ``--repeats`` steps after
  ``--warmup``, as images/s. It is the peer: ``loader / model`` > 1 means the loader alone outpaces the
  step, so with enough cores it is not the bottleneck.
- The loader passes and model steps are interleaved run by run (`time_interleaved`), so background load on
  a shared machine hits both alike; ``bg load`` is the share of the machine's CPU time other processes
  used meanwhile.
- ``training loop``: both together, as the trainer runs them (a step per batch from the loader), images/s
  of ``--loop-repeats`` passes (first batch excluded). Workers then share the cores with the step:
  ``loop / model`` near 1 means the loader hides behind the step on this machine; well below 1, training
  waits for data.

Example: ``python scripts/bench_dataloader.py`` (about a minute on 2 cores);
``--preset paper`` uses paper-size augmentation on 640-px images (a few minutes).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detr_ssl.benchmarking import backward_and_step, environment, markdown_table, time_interleaved, write_json
from detr_ssl.cli.finetune import load_datasets, resolve_data
from detr_ssl.config import FinetuneConfig, parse_finetune_args
from detr_ssl.datasets import Batch, collate_detection, demo_detection_dataset
from detr_ssl.engine.data import training_loader
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.tasks.supervised import SupervisedTask, build_supervised

#: Default image side per preset: the demo's 128 px, and COCO's typical 640 px for the paper recipe.
IMAGE_SIZES = {"demo": 128, "paper": 640}
JPEG_QUALITY = 90


def write_jpeg_coco(folder: Path, num_images: int, image_size: int, seed: int) -> Path:
    """A COCO training JSON with ``num_images`` JPEG images in ``folder / "images"``; returns the JSON.

    The images and boxes are the demo detection set's (rendered as PNG, then re-encoded).
    """
    demo = demo_detection_dataset(folder / "demo", num_train=num_images, num_val=1, image_size=image_size,
                                  seed=seed)
    document = json.loads(demo.train_json.read_text(encoding="utf-8"))
    (folder / "images").mkdir()
    for image in document["images"]:
        jpeg = Path(image["file_name"]).with_suffix(".jpg").name
        Image.open(demo.image_dir / image["file_name"]).convert("RGB").save(folder / "images" / jpeg,
                                                                           quality=JPEG_QUALITY)
        image["file_name"] = jpeg
    train_json = folder / "train.json"
    train_json.write_text(json.dumps(document), encoding="utf-8")
    return train_json


def finetune_config(args: argparse.Namespace, train_json: Path, output: Path) -> FinetuneConfig:
    """The config ``scripts/finetune.py`` would run with on ``train_json`` (it doubles as the val set)."""
    argv = ["--preset", args.preset, "--model-size", args.model_size, "--train-json", str(train_json),
            "--val-json", str(train_json), "--images", str(train_json.parent / "images"),
            "--output-dir", str(output), "--seed", str(args.seed)]
    if args.batch_size is not None:
        argv += ["--batch-size", str(args.batch_size)]
    config = parse_finetune_args(argv)
    return replace(config, data=resolve_data(config.data))


def loader_with(dataset: Dataset, cfg: FinetuneConfig, workers: int) -> DataLoader:
    """The loader `Trainer` builds (before Accelerate wraps it), with ``workers`` worker processes."""
    return training_loader(dataset, cfg.optim.batch_size, cfg.run.seed, workers, collate_detection)


def images_per_second(batches: Iterable[Batch], consume: Callable[[Batch], object] = lambda batch: None) -> float:
    """Images/s of one pass over ``batches``, each handed to ``consume``; the first batch is not timed."""
    iterator = iter(batches)
    next(iterator)
    images, start = 0, time.perf_counter()
    for batch in iterator:
        consume(batch)
        images += len(batch)
    if images == 0:
        raise SystemExit("one batch per pass is not enough to time: use more --num-images or a smaller batch")
    return images / (time.perf_counter() - start)


def train_step(model: nn.Module, task: SupervisedTask, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig,
               batch: Batch) -> None:
    """One optimiser step as the trainer takes it: the task's loss, backward, gradient clipping, AdamW."""
    backward_and_step(task.compute_loss(model, batch).total, optimizer, cfg.optim.clip_max_norm)


def run(args: argparse.Namespace, cfg: FinetuneConfig) -> dict[str, object]:
    """Times the model step and a loader pass per worker count interleaved, then the training loop."""
    train_set, _ = load_datasets(cfg.data)
    torch.manual_seed(cfg.run.seed)
    model, task = build_supervised(cfg.architecture, cfg.model, train_set.num_classes, cfg.loss, cfg.pair)
    model.train()
    step = functools.partial(train_step, model, task, build_optimizer(model, cfg.optim), cfg)
    batches = itertools.cycle(list(itertools.islice(loader_with(train_set, cfg, 0), args.step_batches)))
    loaders = {workers: loader_with(train_set, cfg, workers) for workers in args.workers}
    rates: dict[int, list[float]] = {workers: [] for workers in args.workers}
    calls = {"model step": lambda: step(next(batches))}
    calls |= {f"loader, {workers} workers": functools.partial(record_pass, loaders[workers], rates[workers])
              for workers in args.workers}
    times, load = time_interleaved(calls, args.warmup, args.repeats)
    step_ms = statistics.median(times["model step"])
    model_rate = cfg.optim.batch_size / step_ms * 1e3
    results = {}
    for workers, loader in loaders.items():
        rate = statistics.median(rates[workers][args.warmup:])
        loop = statistics.median(images_per_second(loader, step) for _ in range(args.loop_repeats))
        results[str(workers)] = {"loader_images_per_s": rate, "loader_vs_model": rate / model_rate,
                                 "loader_outpaces_model": rate > model_rate,
                                 "loop_images_per_s": loop, "loop_vs_model": loop / model_rate}
    return {
        "num_images": len(train_set),
        "batch_size": cfg.optim.batch_size,
        "train_scales": list(cfg.data.train_scales),
        "max_size": cfg.data.max_size,
        "crop": cfg.data.crop,
        "model_step_ms": step_ms,
        "model_step_times_ms": times["model step"],
        "model_images_per_s": model_rate,
        "background_load": load,
        "workers": results,
    }


def record_pass(loader: DataLoader, rates: list[float]) -> None:
    """Appends the images/s of one pass over ``loader`` to ``rates``."""
    rates.append(images_per_second(loader))


def format_table(result: dict[str, object]) -> str:
    rows = [["model step (peer)", "-", f"{result['model_images_per_s']:.1f}", "1.00", "-"]]
    for workers, numbers in result["workers"].items():
        rows.append([f"loader, {workers} workers", workers, f"{numbers['loader_images_per_s']:.1f}",
                     f"{numbers['loader_vs_model']:.2f}", f"loop {numbers['loop_images_per_s']:.1f} img/s "
                                                          f"= {numbers['loop_vs_model']:.2f} x model"])
    load = result["background_load"]
    title = (f"batch {result['batch_size']}, model step {result['model_step_ms']:.1f} ms, bg load "
             + ("n/a" if load is None else f"{load:.0%}"))
    headers = ["what", "workers", "images/s", "÷ model images/s", "training loop (loader + step)"]
    return title + "\n" + markdown_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="What is measured, and how, is in the module docstring.")
    parser.add_argument("--preset", choices=("demo", "paper"), default="demo",
                        help="fine-tuning preset: augmentation sizes, batch size (default demo)")
    parser.add_argument("--model-size", choices=("tiny", "r50"), default="tiny", help="model preset (default tiny)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the generated images (default: 128 for demo, 640 for paper)")
    parser.add_argument("--num-images", type=int, default=None, help="images generated (default: 64 demo, 32 paper)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the preset's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts (default 0 2)")
    parser.add_argument("--step-batches", type=int, default=4, help="batches the model steps cycle through (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="loader passes and timed model steps (default 5)")
    parser.add_argument("--loop-repeats", type=int, default=1, help="passes of the training loop (default 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed model steps first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("bench_results/dataloader.json"),
                        help="JSON file to write (default bench_results/dataloader.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    image_size = args.image_size or IMAGE_SIZES[args.preset]
    num_images = args.num_images or {"demo": 64, "paper": 32}[args.preset]
    with tempfile.TemporaryDirectory(prefix="bench_dataloader_") as tmp:
        train_json = write_jpeg_coco(Path(tmp), num_images, image_size, args.seed)
        result = run(args, finetune_config(args, train_json, Path(tmp) / "run"))
    print(f"{args.preset} preset, {args.model_size} model, {num_images} JPEG images of {image_size} px, "
          f"{torch.get_num_threads()} threads; " + format_table(result))
    write_json(args.output, {"environment": environment(image_size=image_size), "args": vars(args) | {
        "output": str(args.output)}, "results": result})


if __name__ == "__main__":
    main()
