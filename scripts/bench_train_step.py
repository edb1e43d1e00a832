#!/usr/bin/env python
"""Benchmark one training step: our Deformable DETR vs HuggingFace transformers' DeformableDetrForObjectDetection.

Prints a table and writes ``bench_results/train_step.json``. Needs the ``bench`` extra
(``pip install -e ".[bench]"``); nothing is downloaded.

Both detectors have the same configuration and the same weights: transformers' model is built with random
weights (``detr_ssl.models.transformers_interop``), saved, and read into ours through our
transformers-checkpoint reader; their detections on the benchmark batch must agree (max abs difference
under 1e-4, eval mode) before anything is timed. They also train the same parameters: the backbone's stem
and first stage stay frozen in both, as in the paper.

A step is what a training loop does per batch: forward, the set loss (Hungarian matching; focal, L1 and
GIoU terms on the final and every auxiliary decoder layer), backward, gradient clipping at 0.1 and an AdamW
step. Each library computes its own loss, with transformers' weights (class 1, L1 5, GIoU 2) on both sides,
and the two losses must agree too (1e-4 relative). Sizes:

- ``tiny``: our tiny preset (ResNet-18, 2+2 layers, 64-d, 30 queries) with a frozen-BN backbone, the only
  backbone normalisation transformers has; 4 images of 128 x 160, as the demo trains it;
- ``r50``: the published architecture (ResNet-50, 6+6 layers, 256-d, 300 queries, 4 levels, dropout 0.1 at
  the original code's places, which transformers also gets: its attention and activation dropouts are set
  to 0.1 too); 2 images (the paper's batch per GPU) of 384 x 512 (the paper's are up to 800 x 1333).

Time: median wall time per step over ``--repeats`` steps after ``--warmup``, the two models interleaved step
by step (``detr_ssl.benchmarking.time_interleaved``). Peak memory: the extra resident memory of two steps
above the built model and batch (activations, gradients, optimizer state, temporaries), each model in a
fresh process (``detr_ssl.benchmarking.peak_rss_in_fresh_process``; Linux only).

Example: ``python scripts/bench_train_step.py`` (a few minutes on 2 cores; ``--sizes tiny`` under a minute).
"""

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

from detr_ssl.benchmarking import (
    backward_and_step,
    environment,
    markdown_table,
    peak_rss_in_fresh_process,
    synthetic_detection_batch,
    time_interleaved,
    write_json,
)
from detr_ssl.config import LossConfig, OptimConfig
from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.engine.optim import build_optimizer
from detr_ssl.losses import build_criterion
from detr_ssl.models.config import ModelConfig, model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.transformers_interop import build_transformers_detector

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is first imported (lazily, when building)

SIZES: dict[str, tuple[ModelConfig, tuple[int, int]]] = {
    # name: (architecture, default image height x width)
    "tiny": (replace(model_preset("tiny"), backbone_norm="frozen_bn", backbone_frozen_stages=1), (128, 160)),
    "r50": (model_preset("r50"), (384, 512)),
}
DEFAULT_BATCH = {"tiny": 4, "r50": 2}  # the demo preset's batch; the paper's per GPU
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
    config = SIZES[size][0]
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


def bench_size(size: str, args: argparse.Namespace) -> dict[str, object]:
    height, width = args.image_size or SIZES[size][1]
    batch = args.batch or DEFAULT_BATCH[size]
    images, mask, targets = make_batch(batch, height, width, args.seed)
    models = dict(zip(IMPLEMENTATIONS, build_pair(size, args.seed)))
    agreement = check_same_function(models["ours"], models["transformers"], images, mask, targets)
    steps = {name: make_step(name, model, images, mask, targets) for name, model in models.items()}
    times, load = time_interleaved(steps, args.warmup, args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    peaks = {name: (None if args.no_memory else
                    peak_rss_in_fresh_process(memory_setup, name, size, batch, height, width, args.seed,
                                              calls=2)) for name in IMPLEMENTATIONS}
    print(f"  done {size}", file=sys.stderr, flush=True)
    ours_peak, their_peak = peaks["ours"], peaks["transformers"]
    return {
        "size": size, "batch": batch, "image": [height, width], **agreement, "median_ms": medians, "times_ms": times, "peak_mb": peaks,
        "background_load": load,
        "speedup_vs_transformers": medians["transformers"] / medians["ours"],
        "memory_vs_transformers": (ours_peak / their_peak) if ours_peak and their_peak else None,
    }


def format_table(results: list[dict]) -> str:
    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    rows = []
    for r in results:
        ratio = r["memory_vs_transformers"]
        rows.append([r["size"], f"{r['batch']} x {r['image'][0]}x{r['image'][1]}",
                     f"{r['median_ms']['ours']:.0f}", f"{r['median_ms']['transformers']:.0f}",
                     f"{r['speedup_vs_transformers']:.2f}x", mb(r["peak_mb"]["ours"]),
                     mb(r["peak_mb"]["transformers"]), "n/a" if ratio is None else f"{ratio:.2f}x",
                     "n/a" if r["background_load"] is None else f"{r['background_load']:.0%}"])
    return markdown_table(["size", "batch", "ours ms/step", "transformers ms/step", "speed-up",
                           "ours peak MiB", "transformers peak MiB", "memory ratio", "background load"], rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="What is measured, and how, is in the module docstring.")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: tiny 4, r50 2)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image height and width (default: tiny 128 160, r50 384 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (median; default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("bench_results/train_step.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = [bench_size(size, args) for size in args.sizes]
    print(format_table(results))
    import transformers

    write_json(args.output, {"environment": environment(transformers=transformers.__version__),
                             "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                             "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
