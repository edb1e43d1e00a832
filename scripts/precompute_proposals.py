#!/usr/bin/env python
"""Precompute the selective-search box proposals of an image folder (or a COCO JSON's images) into a cache.

    python scripts/precompute_proposals.py --images data/coco/train2017 --cache cache/proposals --workers 8

Resumable: rerun the same command after an interruption; finished images are not recomputed.
"""

import sys

from detr_ssl.cli.precompute_proposals import cli

if __name__ == "__main__":
    sys.exit(cli())
