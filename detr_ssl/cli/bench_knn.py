"""The measurement code of ``scripts/bench_knn.py`` (what it measures, and how, is in its docstring): k-NN
accuracy of each backbone pretext's features on the demo's object crops, against random initialisation."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from detr_ssl.cli.pretrain import parse_pretrain_args, pretrain
from detr_ssl.datasets import CocoDetection, demo_detection_dataset, make_eval_transforms
from detr_ssl.datasets.sizes import DEMO_EVAL_SIZE, DEMO_MAX_SIZE
from detr_ssl.errors import ConfigError
from detr_ssl.evaluation.knn import knn_probe
from detr_ssl.models.teachers import FrozenEncoder, build_teacher, resnet_trunk
from detr_ssl.tasks import all_tasks
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, BackbonePretextTask

RANDOM_INIT = "random init"


def backbone_pretexts() -> tuple[str, ...]:
    return tuple(name for name, task in all_tasks().items() if issubclass(task, BackbonePretextTask))


def _pretrained_layout(task: str, seed: int, args: argparse.Namespace, train_json: Path, images: Path) -> Path:
    out = args.runs_dir / f"knn_{task}_seed{seed}"
    layout = out / SWAV_LAYOUT_FILE
    if layout.is_file() and not args.retrain:
        print(f"reusing {layout}")
        return layout
    argv = ["--task", task, "--preset", "demo", "--data", str(train_json), "--image-dir", str(images),
            "--model.backbone", args.arch, "--output-dir", str(out), "--seed", str(seed)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    pretrain(parse_pretrain_args(argv))
    return layout


def probe_all(args: argparse.Namespace) -> dict[str, object]:
    """Per backbone (random init first, then each pretext) and seed, the k-NN accuracies; and the bank size."""
    known = backbone_pretexts()
    tasks = args.tasks or known
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        raise ConfigError(f"--tasks {' '.join(unknown)}: not a backbone pretext; choose from {', '.join(known)}")
    demo = demo_detection_dataset()
    transforms = make_eval_transforms(DEMO_EVAL_SIZE, DEMO_MAX_SIZE)
    bank = CocoDetection(demo.train_json, demo.image_dir, transforms)
    queries = CocoDetection(demo.val_json, demo.image_dir, transforms)
    runs: dict[str, list[dict[str, float]]] = {RANDOM_INIT: [], **{task: [] for task in tasks}}
    for seed in args.seeds:
        torch.manual_seed(seed)
        random_trunk = FrozenEncoder(resnet_trunk(args.arch))
        runs[RANDOM_INIT].append(knn_probe(random_trunk, bank, queries, args.k, args.crop_size))
        for task in tasks:
            layout = _pretrained_layout(task, seed, args, demo.train_json, demo.image_dir)
            encoder = build_teacher(layout, args.arch, "layer4")
            runs[task].append(knn_probe(encoder, bank, queries, args.k, args.crop_size))
    return {"bank_objects": sum(len(bank[i][1]["labels"]) for i in range(len(bank))), "runs": runs}
