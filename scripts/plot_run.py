#!/usr/bin/env python
"""Draw a training run's losses, learning rates and validation AP from its scalars.csv (see --help)."""

import sys

from detr_ssl.cli.plot_run import cli

if __name__ == "__main__":
    sys.exit(cli())
