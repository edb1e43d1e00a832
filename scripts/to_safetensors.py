#!/usr/bin/env python
"""Convert a checkpoint's weights to safetensors, readable wherever a .pth weights file is (see --help)."""

import sys

from detr_ssl.cli.to_safetensors import cli

if __name__ == "__main__":
    sys.exit(cli())
