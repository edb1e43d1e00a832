#!/usr/bin/env python
"""Export a detector checkpoint to ONNX (dynamic batch and image size), optionally checked with onnxruntime:
    python scripts/export_onnx.py outputs/finetune/checkpoint.pth --output detector.onnx --check
"""

import sys

from detr_ssl.cli.export_onnx import cli

if __name__ == "__main__":
    sys.exit(cli())
