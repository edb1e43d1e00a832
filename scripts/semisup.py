#!/usr/bin/env python
"""Semi-supervised label fractions: fine-tune each initialisation on 1/2/5/10% folds of COCO train, report AP.

    python scripts/semisup.py --train-json annotations/instances_train2017.json \
        --val-json annotations/instances_val2017.json --images train2017 --val-images val2017 \
        --pretrained detreg=outputs/pretrain/pretrained.pth --backbone-init swav_800ep_pretrain.pth.tar
    python scripts/semisup.py --demo      # pretraining chain + fractions of the embedded demo set, on a CPU
"""

import sys

from detr_ssl.cli.semisup import cli

if __name__ == "__main__":
    sys.exit(cli())
