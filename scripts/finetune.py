#!/usr/bin/env python
"""Fine-tune (or train from scratch) Deformable DETR on COCO-format data and report COCO box AP.

With no data flags it runs the tiny model on the embedded demo set:
    accelerate launch scripts/finetune.py
"""

import sys

from detr_ssl.cli.finetune import cli

if __name__ == "__main__":
    sys.exit(cli())
