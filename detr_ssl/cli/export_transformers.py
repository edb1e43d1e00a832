"""``scripts/export_hf.py``: a detr-ssl detector checkpoint as a HuggingFace transformers model directory.

The exporter is imported inside :func:`main`, after parsing (start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from detr_ssl.cli.common import run_main


@dataclass(frozen=True)
class ExportTransformersConfig:
    """Write a detector checkpoint (a fine-tuning checkpoint.pth or a detector pretext's pretrained.pth) as
    a directory that transformers' DeformableDetrForObjectDetection.from_pretrained loads offline."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """The detector checkpoint to export."""
    out_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")]
    """Directory to write config.json, model.safetensors and preprocessor_config.json into."""


def main(argv: list[str]) -> int:
    cfg = tyro.cli(ExportTransformersConfig, args=argv)
    from detr_ssl.export.transformers_export import EXPORTED_FILES, export_transformers

    out_dir = export_transformers(cfg.checkpoint, cfg.out_dir)
    print(f"{cfg.checkpoint} exported to {out_dir}: {', '.join(EXPORTED_FILES)}")
    print("load it with:\n"
          "    from transformers import AutoImageProcessor, DeformableDetrForObjectDetection\n"
          f"    model = DeformableDetrForObjectDetection.from_pretrained({str(out_dir)!r})\n"
          f"    processor = AutoImageProcessor.from_pretrained({str(out_dir)!r})\n"
          "label index -> name: model.config.id2label; -> COCO category id: model.config.category_ids")
    return 0


def cli() -> int:
    return run_main(main)
