#!/usr/bin/env python
"""Draw a detector pretext's targets next to its predictions (DetReg proposals, UP-DETR query patches)."""

import sys

from detr_ssl.cli.show_pretext import cli

if __name__ == "__main__":
    sys.exit(cli())
