"""``scripts/show_pretext.py``: what a detector pretext was asked to find, next to what it finds.

One row per image. DetReg and Pair DETR (trained on selective-search proposals): the proposals the
pretraining used as targets, then the model's highest-scoring class-agnostic boxes. UP-DETR: random
patches cut from the image (each in its own colour), then where the model finds each patch, with the IoU;
the share of patches found with IoU >= 0.5 is printed.

The model and drawing code is imported inside the functions that use it (start-up: see
``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tyro

from detr_ssl.cli.common import run_main
from detr_ssl.cli.predict import resolve_images
from detr_ssl.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from PIL import Image

HIT_IOU = 0.5
PROPOSAL_TASKS = ("detreg", "pairdetr")


@dataclass(frozen=True)
class ShowPretextConfig:
    """Draw a detector pretext's targets next to its predictions for a few images."""

    checkpoint: Path
    """pretrained.pth of --task detreg, pairdetr or updetr."""
    images: str
    """An image file, a folder or a glob pattern; the first --count images are drawn."""
    output: Path = Path("outputs/show_pretext.png")
    count: int = 4
    """Images to draw."""
    boxes: int = 10
    """Proposals and predicted boxes drawn per image (DetReg, Pair DETR)."""
    patches: int = 3
    """Query patches cut from each image (UP-DETR)."""
    seed: int = 0
    """Seed of the UP-DETR patches."""


def _proposal_rows(cfg: ShowPretextConfig, images: list[Path], checkpoint: dict) -> list[Image.Image]:
    import numpy as np

    from detr_ssl.datasets.image_io import read_rgb_image
    from detr_ssl.predictor import Detector
    from detr_ssl.proposals.selective_search import ProposalSettings, selective_search_boxes
    from detr_ssl.visualize import draw_boxes, side_by_side, titled

    detector = Detector.from_checkpoint(cfg.checkpoint, class_agnostic=True, checkpoint=checkpoint)
    rows = []
    for path, found in zip(images, detector.predict(images, top_k=cfg.boxes)):
        picture = read_rgb_image(path)
        proposals = selective_search_boxes(np.asarray(picture), ProposalSettings())[: cfg.boxes]
        rows.append(side_by_side([
            titled(draw_boxes(picture, proposals.tolist()), f"selective search (targets), first {len(proposals)}"),
            titled(draw_boxes(picture, found.boxes.tolist(), [f"{s:.2f}" for s in found.scores.tolist()],
                              colour_ids=[3] * len(found)), f"predictions, top {len(found)}"),
        ]))
    return rows


def _patch_rows(cfg: ShowPretextConfig, images: list[Path], checkpoint: dict) -> list[Image.Image]:
    from detr_ssl.datasets.image_io import read_rgb_image
    from detr_ssl.query_patch import QueryPatchDetector, patch_search_hits
    from detr_ssl.visualize import draw_boxes, side_by_side, titled

    finder = QueryPatchDetector.from_checkpoint(cfg.checkpoint, checkpoint=checkpoint)
    rows, hits, total = [], 0, 0
    for path in images:
        picture = read_rgb_image(path)
        searches = patch_search_hits(finder, [picture], cfg.patches, seed=cfg.seed + total)
        colours = list(range(len(searches)))
        rows.append(side_by_side([
            titled(draw_boxes(picture, [s.source.tolist() for s in searches], colour_ids=colours), "query patches"),
            titled(draw_boxes(picture, [s.found.tolist() for s in searches], [f"IoU {s.iou:.2f}" for s in searches],
                              colours), "where the model finds them"),
        ]))
        hits += sum(s.iou >= HIT_IOU for s in searches)
        total += len(searches)
    print(f"patches found again (IoU >= {HIT_IOU}): {hits} of {total} ({hits / total:.0%})")
    return rows


def show_pretext(cfg: ShowPretextConfig) -> Path:
    if cfg.count < 1 or cfg.boxes < 1 or cfg.patches < 1:
        raise ConfigError("--count, --boxes and --patches must be positive")
    from detr_ssl.models.checkpoint_io import load_untrusted
    from detr_ssl.visualize import stacked

    checkpoint = load_untrusted(cfg.checkpoint)
    task = checkpoint.get("task") if isinstance(checkpoint, dict) else None
    images = resolve_images(cfg.images)[: cfg.count]
    if task in PROPOSAL_TASKS:
        rows = _proposal_rows(cfg, images, checkpoint)
    elif task == "updetr":
        rows = _patch_rows(cfg, images, checkpoint)
    else:
        raise CheckpointError(f"{cfg.checkpoint}: not the pretrained.pth of a detector pretext "
                              f"({', '.join(PROPOSAL_TASKS)} or updetr); it records task {task!r}")
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    stacked(rows).save(cfg.output)
    print(f"wrote {cfg.output}")
    return cfg.output


def main(argv: list[str]) -> int:
    show_pretext(tyro.cli(ShowPretextConfig, args=argv))
    return 0


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli())
