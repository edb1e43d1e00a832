#!/usr/bin/env python
"""Few-shot COCO benchmark (TFA split): base training, then K-shot fine-tuning per (K, seed); novel/base AP.

    python scripts/fewshot_coco.py --coco-root /data/coco --pretrained outputs/pretrain/pretrained.pth
    python scripts/fewshot_coco.py --demo      # the embedded demo set, minutes on a CPU
"""

import sys

from detr_ssl.cli.fewshot import cli

if __name__ == "__main__":
    sys.exit(cli())
