#!/usr/bin/env python
"""Run a trained detector on images: COCO-results JSON and annotated pictures (see --help)."""

import sys

from detr_ssl.cli.predict import cli

if __name__ == "__main__":
    sys.exit(cli())
