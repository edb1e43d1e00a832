#!/usr/bin/env python
"""Pretrain the whole Deformable DETR without labels (UP-DETR or DetReg pretext task).

With no data flags it runs the tiny model on the embedded demo photos:
    accelerate launch scripts/pretrain.py --task detreg
"""

import sys

from detr_ssl.cli.pretrain import cli

if __name__ == "__main__":
    sys.exit(cli())
