#!/usr/bin/env python
"""Representation quality of our backbone pretexts: k-NN accuracy on the demo's object crops.

Pretrains the tiny preset's ResNet with each backbone pretext (``--tasks``, default SwAV) on the demo
detection set's *training images* (labels ignored), then embeds every annotated object crop of the demo
train split (the bank) and val split (the queries) with the frozen backbone (layer4, global pooled) and
scores a cosine k-NN vote. The peer is the same backbone at random initialisation, in the same run.

Prints a table and writes ``bench_results/knn.json``; pretraining runs go to ``bench_results/knn_<task>/``
and are reused on a rerun (``--retrain`` to redo them). Example: ``python scripts/bench_knn.py`` (about
5-10 minutes on 2 cores, almost all of it pretraining).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from detr_ssl.cli.common import run_main
from detr_ssl.cli.pretrain import pretrain
from detr_ssl.config import parse_pretrain_args
from detr_ssl.datasets import CocoDetection, demo_detection_dataset, make_eval_transforms
from detr_ssl.datasets.transforms import DEMO_EVAL_SIZE, DEMO_MAX_SIZE
from detr_ssl.evaluation.knn import knn_accuracy, object_crop_embeddings
from detr_ssl.models.teachers import FrozenEncoder, build_teacher, resnet_trunk
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE


@dataclass(frozen=True)
class BenchConfig:
    """k-NN accuracy of backbone-pretext features vs random init on the demo's object crops."""

    tasks: tuple[str, ...] = ("swav",)
    """Backbone pretexts to pretrain and probe."""
    epochs: int | None = None
    """Pretraining epochs (default: the task's demo preset)."""
    arch: str = "resnet18"
    k: tuple[int, ...] = (1, 5, 20)
    crop_size: int = 64
    seed: int = 0
    retrain: bool = False
    """Pretrain again even when bench_results/knn_<task>/ holds a finished run."""
    output: Path = Path("bench_results")


def _pretrained_layout(task: str, cfg: BenchConfig, train_json: Path, images: Path) -> Path:
    out = cfg.output / f"knn_{task}"
    layout = out / SWAV_LAYOUT_FILE
    if layout.is_file() and not cfg.retrain:
        print(f"reusing {layout}")
        return layout
    argv = ["--task", task, "--preset", "demo", "--data", str(train_json), "--image-dir", str(images),
            "--model.backbone", cfg.arch, "--output-dir", str(out), "--seed", str(cfg.seed)]
    if cfg.epochs is not None:
        argv += ["--epochs", str(cfg.epochs)]
    pretrain(parse_pretrain_args(argv))
    return layout


def _accuracies(encoder: FrozenEncoder, bank: CocoDetection, queries: CocoDetection, cfg: BenchConfig
                ) -> dict[str, float]:
    bank_features, bank_labels = object_crop_embeddings(encoder, bank, cfg.crop_size)
    query_features, query_labels = object_crop_embeddings(encoder, queries, cfg.crop_size)
    return {f"top1@k={k}": knn_accuracy(bank_features, bank_labels, query_features, query_labels, k) for k in cfg.k}


def main(argv: list[str]) -> int:
    cfg = tyro.cli(BenchConfig, args=argv)
    demo = demo_detection_dataset()
    transforms = make_eval_transforms(DEMO_EVAL_SIZE, DEMO_MAX_SIZE)
    bank = CocoDetection(demo.train_json, demo.image_dir, transforms)
    queries = CocoDetection(demo.val_json, demo.image_dir, transforms)
    torch.manual_seed(cfg.seed)
    rows = {"random init": _accuracies(FrozenEncoder(resnet_trunk(cfg.arch)), bank, queries, cfg)}
    for task in cfg.tasks:
        layout = _pretrained_layout(task, cfg, demo.train_json, demo.image_dir)
        rows[task] = _accuracies(build_teacher(layout, cfg.arch, "layer4"), bank, queries, cfg)
    columns = list(rows["random init"])
    print(f"\nk-NN on demo object crops ({cfg.arch}, layer4 pooled, {cfg.crop_size}px crops; "
          f"bank = train objects, queries = val objects)")
    print("| backbone | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, accuracies in rows.items():
        print(f"| {name} | " + " | ".join(f"{accuracies[c]:.3f}" for c in columns) + " |")
    result = {"machine": platform.platform(), "threads": torch.get_num_threads(), "arch": cfg.arch,
              "bank_objects": sum(len(bank[i][1]["labels"]) for i in range(len(bank))), "results": rows}
    cfg.output.mkdir(parents=True, exist_ok=True)
    (cfg.output / "knn.json").write_text(json.dumps(result, indent=2))
    print(f"written to {cfg.output / 'knn.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
