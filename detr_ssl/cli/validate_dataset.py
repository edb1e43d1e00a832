"""``scripts/validate_dataset.py``: check a COCO JSON + image folder before spending hours training on it.

The dataset code is imported inside :func:`validate` (start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from detr_ssl.cli.common import run_main


@dataclass(frozen=True)
class ValidateConfig:
    """Check a COCO-format dataset: the JSON's structure, ids and boxes, then every image file
    (exists, decodes, has the declared size). Prints a report; exit status 0 when clean, 1 with problems."""

    annotations: Path
    """COCO-format annotation JSON."""
    images: Path
    """Folder the JSON's file names are relative to."""
    decode: bool = True
    """Decode every image (finds truncated files); --no-decode only reads headers, much faster."""


def validate(cfg: ValidateConfig) -> int:
    from detr_ssl.datasets import CocoDetection

    dataset = CocoDetection(cfg.annotations, cfg.images)  # a structural problem raises a one-line DataError
    coco = dataset.coco
    with_boxes = {ann["image_id"] for ann in coco.anns.values() if not ann.get("iscrowd", 0)}
    crowd = sum(1 for ann in coco.anns.values() if ann.get("iscrowd", 0))
    print(f"{cfg.annotations}: {len(dataset)} images ({len(dataset) - len(with_boxes)} without boxes), "
          f"{len(coco.anns)} annotations ({crowd} crowd, ignored in training), {dataset.num_classes} categories")
    report = dataset.validate_images(decode=cfg.decode)
    print(report)
    return 0 if report.ok else 1


def main(argv: list[str]) -> int:
    return validate(tyro.cli(ValidateConfig, args=argv))


def cli() -> int:
    return run_main(main)
