"""``scripts/export_onnx.py``: a detr-ssl detector checkpoint as an ONNX graph (dynamic batch and image size).

The detector and the exporter are imported inside :func:`main`, after parsing (start-up: see
``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from detr_ssl.cli.common import run_main

CHECK_TOLERANCE = 1e-3
"""--check fails (exit status 1) when an output differs from PyTorch's by more than this."""


@dataclass(frozen=True)
class ExportOnnxConfig:
    """Export a detector checkpoint (a fine-tuning checkpoint.pth or a detector pretext's pretrained.pth) to
    ONNX: inputs images (B, 3, H, W) float32 and padding_mask (B, H, W) bool (True on padding), outputs logits
    (B, Q, C) and boxes (B, Q, 4) cxcywh normalised; post-process them as detr_ssl.evaluation.postprocess does
    (detr_ssl.export.onnx_export.OnnxDetector runs the file and returns what postprocess takes)."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """The detector checkpoint to export."""
    output: Path | None = None
    """ONNX file to write (default: CHECKPOINT with the suffix .onnx)."""
    opset: int | None = None
    """ONNX opset, 18 or newer (default: torch's, 20 with torch 2.14)."""
    check: bool = False
    """Then run the file with onnxruntime on a random padded batch and print the largest difference from
    PyTorch per output; exit status 1 when one exceeds 1e-3."""


def main(argv: list[str]) -> int:
    cfg = tyro.cli(ExportOnnxConfig, args=argv)
    from detr_ssl.detector import load_detector
    from detr_ssl.export.onnx_export import export_model, max_onnx_difference, min_image_size

    output = cfg.output or cfg.checkpoint.with_suffix(".onnx")
    loaded = load_detector(cfg.checkpoint, "cpu")
    start = time.perf_counter()
    export_model(loaded.model, output, cfg.opset, loaded.detect)
    size = output.stat().st_size / 2**20
    print(f"{cfg.checkpoint} exported to {output} ({size:.1f} MiB, {time.perf_counter() - start:.0f} s); "
          f"images at least {min_image_size(loaded.model)} px high and wide")
    if not cfg.check:
        return 0
    differences = max_onnx_difference(loaded.model, output, loaded.detect)
    print("onnxruntime vs PyTorch, largest absolute difference: "
          + ", ".join(f"{name} {value:.2e}" for name, value in differences.items()))
    if max(differences.values()) > CHECK_TOLERANCE:
        print(f"error: {output} differs from PyTorch by more than {CHECK_TOLERANCE}", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    return run_main(main)
