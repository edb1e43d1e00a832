#!/usr/bin/env python
"""Compare every pretraining method on one protocol: pretrain each on the same unlabeled images, fine-tune
each (and random init, and the backbone-only baseline) at every label fraction and seed, one table.

    python scripts/compare_pretexts.py --demo                 # the embedded demo set, about 15 min on a CPU
    python scripts/compare_pretexts.py --demo --dry-run       # the plan: stages, what each needs, its steps
    python scripts/compare_pretexts.py --train-json annotations/instances_train2017.json \
        --val-json annotations/instances_val2017.json --images train2017 --val-images val2017 \
        --tasks swav detreg pixpro --seeds 1 2 3 --launcher "accelerate launch --num_processes 8"
"""

import sys

from detr_ssl.cli.compare import cli

if __name__ == "__main__":
    sys.exit(cli())
