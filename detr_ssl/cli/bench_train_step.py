"""The measurement code of ``scripts/bench_train_step.py`` (what it measures, and how, is in its docstring):
our Deformable DETR's training step against transformers' on the same weights and batch."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from detr_ssl.bench_cli import BenchRun
from detr_ssl.benchmarking import (
    backward_and_step,
    peak_rss_in_fresh_process,
    synthetic_detection_batch,
    time_interleaved,
)
from detr_ssl.config import LossConfig, OptimConfig
from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.losses import build_criterion
from detr_ssl.models.config import ModelConfig, model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.transformers_interop import build_transformers_detector

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is first imported (lazily, when building)

#: The frozen-BN tiny model: transformers has no other backbone normalisation.
ARCHITECTURES: dict[str, ModelConfig] = {
    "tiny": replace(model_preset("tiny"), backbone_norm="frozen_bn", backbone_frozen_stages=1),
    "r50": model_preset("r50"),
}
NUM_CLASSES = 91
BOXES_PER_IMAGE = 6
IMPLEMENTATIONS = ("ours", "transformers")
# transformers' matching and loss weights (class 1, L1 5, GIoU 2; the paper uses class 2): the same loss.
CRITERION = build_criterion(NUM_CLASSES, LossConfig(cls_weight=1.0))


def make_batch(batch: int, height: int, width: int, seed: int) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """Random images (the last one padded on the right and bottom, as in a real batch), their padding mask
    and ``BOXES_PER_IMAGE`` random targets per image (cxcywh, normalised)."""
    return synthetic_detection_batch(batch, height, width, NUM_CLASSES, BOXES_PER_IMAGE, seed, pad_last=True)


def build_pair(size: str, seed: int) -> tuple[nn.Module, nn.Module]:
    """(ours, transformers') with identical weights: theirs randomly initialised, read into ours."""
    config = ARCHITECTURES[size]
    torch.manual_seed(seed)
    theirs = build_transformers_detector(config, NUM_CLASSES)
    ours = build_model(config, NUM_CLASSES)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "transformers.pth"
        torch.save(theirs.state_dict(), path)
        missing, dropped = load_pretrained(ours, path)
    if missing or dropped:
        raise SystemExit(f"weights did not transfer: missing {missing[:5]}, unused {dropped[:5]}")
    return ours, theirs


def _their_labels(targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    return [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


def check_same_function(ours: nn.Module, theirs: nn.Module, images: Tensor, mask: Tensor,
                        targets: list[dict[str, Tensor]]) -> dict[str, float]:
    """The two models' largest logit/box difference and their two losses (eval mode, so no dropout);
    exits when the outputs differ by more than 1e-4 or the losses by more than 1e-4 relative."""
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        mine = ours(images, mask)
        reference = theirs(pixel_values=images, pixel_mask=(~mask).long(), labels=_their_labels(targets))
        loss = float(CRITERION(mine, targets).total)
    difference = max(float((mine.logits - reference.logits).abs().max()),
                     float((mine.boxes - reference.pred_boxes).abs().max()))
    their_loss = float(reference.loss)
    if difference > 1e-4 or abs(loss - their_loss) > 1e-4 * abs(their_loss):
        raise SystemExit(f"the two models disagree: outputs by {difference:.2e}, losses {loss} vs {their_loss}; "
                         "nothing timed")
    return {"max_output_difference": difference, "loss_ours": loss, "loss_transformers": their_loss}


def make_step(implementation: str, model: nn.Module, images: Tensor, mask: Tensor,
              targets: list[dict[str, Tensor]]) -> Callable[[], float]:
    """One training step of ``model`` on the batch; returns the step's loss. Each side uses its library's
    optimizer: ours is ``build_optimizer`` (the paper's parameter groups), transformers' Trainer defaults
    to fused AdamW."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if implementation == "ours":
        optimizer = build_optimizer(model, OptimConfig())

        def loss() -> Tensor:
            return CRITERION(model(images, mask), targets).total
    else:
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-4, fused=True)
        labels = _their_labels(targets)
        pixel_mask = (~mask).long()

        def loss() -> Tensor:
            return model(pixel_values=images, pixel_mask=pixel_mask, labels=labels).loss

    def step() -> float:
        value = loss()
        backward_and_step(value, optimizer, max_norm=0.1)
        return float(value.detach())

    return step


def memory_setup(implementation: str, size: str, batch: int, height: int, width: int,
                 seed: int) -> Callable[[], float]:
    """Builds one model and its batch in a fresh process (see peak_rss_in_fresh_process)."""
    ours, theirs = build_pair(size, seed)
    model = ours if implementation == "ours" else theirs
    del ours, theirs
    return make_step(implementation, model, *make_batch(batch, height, width, seed))


def bench_size(size: str, batch: int, height: int, width: int, args: argparse.Namespace,
               run: BenchRun) -> dict[str, object]:
    """Checks that the two models agree on ``size`` with a batch of ``batch`` images of ``height`` x ``width``,
    then times their steps (recorded in ``run``) and, unless ``--no-memory``, measures their peak memory."""
    images, mask, targets = make_batch(batch, height, width, args.seed)
    models = dict(zip(IMPLEMENTATIONS, build_pair(size, args.seed)))
    agreement = check_same_function(models["ours"], models["transformers"], images, mask, targets)
    steps = {name: make_step(name, model, images, mask, targets) for name, model in models.items()}
    times, load = time_interleaved(steps, args.warmup, args.repeats)
    run.record(size, times, load)
    medians = {name: statistics.median(values) for name, values in times.items()}
    peaks = {name: (None if args.no_memory else
                    peak_rss_in_fresh_process(memory_setup, name, size, batch, height, width, args.seed,
                                              calls=2)) for name in IMPLEMENTATIONS}
    print(f"  done {size}", file=sys.stderr, flush=True)
    ours_peak, their_peak = peaks["ours"], peaks["transformers"]
    return {
        "size": size, "batch": batch, "image": [height, width], **agreement, "median_ms": medians, "peak_mb": peaks,
        "speedup_vs_transformers": medians["transformers"] / medians["ours"],
        "memory_vs_transformers": (ours_peak / their_peak) if ours_peak and their_peak else None,
    }
