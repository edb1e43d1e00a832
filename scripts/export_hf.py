#!/usr/bin/env python
"""Export a detector checkpoint to a HuggingFace transformers directory (DeformableDetrForObjectDetection):
    python scripts/export_hf.py outputs/finetune/checkpoint.pth exported/
"""

import sys

from detr_ssl.cli.export_transformers import cli

if __name__ == "__main__":
    sys.exit(cli())
