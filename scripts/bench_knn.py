#!/usr/bin/env python
"""Representation quality of our backbone pretexts: k-NN accuracy on the demo's object crops.

Pretrains the tiny preset's ResNet with each backbone pretext (``--tasks``, default: every backbone pretext)
and each seed (``--seeds``) on the demo detection set's *training images* (labels ignored), then embeds
every annotated object crop of the demo train split (the bank) and val split (the queries) with the frozen
backbone (layer4, global pooled) and scores a cosine k-NN vote. The peer is the same backbone at random
initialisation (one per seed), in the same run. Each cell is the mean ± standard deviation over the seeds.

Prints a table and writes ``bench_results/knn.json``; pretraining runs go to
``bench_results/knn_<task>_seed<seed>/`` and are reused on a rerun (``--retrain`` to redo them). Example:
``python scripts/bench_knn.py`` (2-4 minutes per task and seed on 2 cores, almost all of it pretraining).
"""

from __future__ import annotations

import json
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from detr_ssl.cli.common import run_main
from detr_ssl.cli.pretrain import parse_pretrain_args, pretrain
from detr_ssl.datasets import CocoDetection, demo_detection_dataset, make_eval_transforms
from detr_ssl.datasets.transforms import DEMO_EVAL_SIZE, DEMO_MAX_SIZE
from detr_ssl.evaluation.knn import knn_probe
from detr_ssl.models.teachers import FrozenEncoder, build_teacher, resnet_trunk
from detr_ssl.tasks import all_tasks
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, BackbonePretextTask


def backbone_pretexts() -> tuple[str, ...]:
    return tuple(name for name, task in all_tasks().items() if issubclass(task, BackbonePretextTask))


@dataclass(frozen=True)
class BenchConfig:
    """k-NN accuracy of backbone-pretext features vs random init on the demo's object crops."""

    tasks: tuple[str, ...] | None = None
    """Backbone pretexts to pretrain and probe (default: all of them)."""
    epochs: int | None = None
    """Pretraining epochs (default: the task's demo preset)."""
    arch: str = "resnet18"
    k: tuple[int, ...] = (1, 5, 20)
    crop_size: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    """One pretraining run (and one random-init peer) per seed."""
    retrain: bool = False
    """Pretrain again even when bench_results/knn_<task>/ holds a finished run."""
    output: Path = Path("bench_results")


def _pretrained_layout(task: str, seed: int, cfg: BenchConfig, train_json: Path, images: Path) -> Path:
    out = cfg.output / f"knn_{task}_seed{seed}"
    layout = out / SWAV_LAYOUT_FILE
    if layout.is_file() and not cfg.retrain:
        print(f"reusing {layout}")
        return layout
    argv = ["--task", task, "--preset", "demo", "--data", str(train_json), "--image-dir", str(images),
            "--model.backbone", cfg.arch, "--output-dir", str(out), "--seed", str(seed)]
    if cfg.epochs is not None:
        argv += ["--epochs", str(cfg.epochs)]
    pretrain(parse_pretrain_args(argv))
    return layout


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main(argv: list[str]) -> int:
    cfg = tyro.cli(BenchConfig, args=argv)
    tasks = cfg.tasks or backbone_pretexts()
    demo = demo_detection_dataset()
    transforms = make_eval_transforms(DEMO_EVAL_SIZE, DEMO_MAX_SIZE)
    bank = CocoDetection(demo.train_json, demo.image_dir, transforms)
    queries = CocoDetection(demo.val_json, demo.image_dir, transforms)
    runs: dict[str, list[dict[str, float]]] = {"random init": [], **{task: [] for task in tasks}}
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        random_trunk = FrozenEncoder(resnet_trunk(cfg.arch))
        runs["random init"].append(knn_probe(random_trunk, bank, queries, cfg.k, cfg.crop_size))
        for task in tasks:
            layout = _pretrained_layout(task, seed, cfg, demo.train_json, demo.image_dir)
            encoder = build_teacher(layout, cfg.arch, "layer4")
            runs[task].append(knn_probe(encoder, bank, queries, cfg.k, cfg.crop_size))
    columns = list(runs["random init"][0])
    print(f"\nk-NN on demo object crops ({cfg.arch}, layer4 pooled, {cfg.crop_size}px crops; bank = train objects, "
          f"queries = val objects; mean ± std over seeds {', '.join(map(str, cfg.seeds))})")
    print("| backbone | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, per_seed in runs.items():
        print(f"| {name} | " + " | ".join(_mean_std([run[c] for run in per_seed]) for c in columns) + " |")
    result = {"machine": platform.platform(), "threads": torch.get_num_threads(), "arch": cfg.arch,
              "seeds": list(cfg.seeds), "bank_objects": sum(len(bank[i][1]["labels"]) for i in range(len(bank))),
              "results": runs}
    cfg.output.mkdir(parents=True, exist_ok=True)
    (cfg.output / "knn.json").write_text(json.dumps(result, indent=2))
    print(f"written to {cfg.output / 'knn.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
