"""The measurement code of ``scripts/bench_dataloader.py`` (what it measures, and how, is in its docstring):
the fine-tuning data pipeline against the model's training step."""

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

from detr_ssl.bench_cli import BenchRun
from detr_ssl.benchmarking import backward_and_step, time_interleaved
from detr_ssl.cli.finetune import load_datasets, resolve_data
from detr_ssl.config import FinetuneConfig, parse_finetune_args
from detr_ssl.datasets import Batch, collate_detection, demo_detection_dataset
from detr_ssl.engine.data import training_loader
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.tasks.supervised import SupervisedTask, build_supervised

JPEG_QUALITY = 90

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


def run(args: argparse.Namespace, cfg: FinetuneConfig, bench: BenchRun) -> dict[str, object]:
    """Times the model step and a loader pass per worker count interleaved (recorded in ``bench``), then the
    training loop."""
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
    bench.record("model step and loader passes", times, load)
    step_ms = statistics.median(times["model step"])
    model_rate = cfg.optim.batch_size / step_ms * 1e3
    results = {}
    for workers, loader in loaders.items():
        rate = statistics.median(rates[workers][args.warmup:])
        loops = [images_per_second(loader, step) for _ in range(args.loop_repeats)]
        loop = statistics.median(loops)
        results[str(workers)] = {"loader_images_per_s": rate, "loader_vs_model": rate / model_rate,
                                 "loader_outpaces_model": rate > model_rate, "loop_images_per_s": loop,
                                 "loop_images_per_s_runs": loops, "loop_vs_model": loop / model_rate}
    return {
        "num_images": len(train_set),
        "batch_size": cfg.optim.batch_size,
        "train_scales": list(cfg.data.train_scales),
        "max_size": cfg.data.max_size,
        "crop": cfg.data.crop,
        "model_step_ms": step_ms,
        "model_images_per_s": model_rate,
        "workers": results,
    }


def record_pass(loader: DataLoader, rates: list[float]) -> None:
    """Appends the images/s of one pass over ``loader`` to ``rates``."""
    rates.append(images_per_second(loader))




def measure(args: argparse.Namespace, image_size: int, num_images: int, bench: BenchRun) -> dict[str, object]:
    """Writes ``num_images`` JPEGs of ``image_size`` px to a temporary folder and runs :func:`run` on them."""
    with tempfile.TemporaryDirectory(prefix="bench_dataloader_") as tmp:
        train_json = write_jpeg_coco(Path(tmp), num_images, image_size, args.seed)
        return run(args, finetune_config(args, train_json, Path(tmp) / "run"), bench)
