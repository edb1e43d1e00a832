#!/usr/bin/env python
"""Check a COCO JSON + image folder up front and print a report:
    python scripts/validate_dataset.py --annotations instances_train2017.json --images train2017
"""

import sys

from detr_ssl.cli.validate_dataset import cli

if __name__ == "__main__":
    sys.exit(cli())
