"""``scripts/to_safetensors.py CHECKPOINT [OUTPUT]``: a weights file as safetensors.

A pretext's ``pretrained.pth`` converts whole; a training ``checkpoint.pth`` loses what only resuming
needs (optimizer, schedule, random state), keeping the weights, the run's config and its categories. Every
command that reads a ``.pth`` weights file (``finetune.py --pretrained``, ``predict.py``, the exports)
reads the ``.safetensors`` file the same way.

The checkpoint code is imported inside :func:`to_safetensors` (start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from detr_ssl.cli.common import run_main
from detr_ssl.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class ToSafetensorsConfig:
    """Convert a checkpoint's weights (and what describes them) to safetensors."""

    checkpoint: tyro.conf.Positional[Path]
    """A pretrained.pth, a training checkpoint.pth, or a plain state dict."""
    output: tyro.conf.Positional[Path | None] = None
    """Where to write (default: CHECKPOINT with the .safetensors suffix)."""


def to_safetensors(cfg: ToSafetensorsConfig) -> Path:
    from detr_ssl.engine.checkpoint import TRAINING_STATE_KEYS
    from detr_ssl.models.checkpoint_io import SAFETENSORS_SUFFIX, load_untrusted, save_safetensors

    output = cfg.output or cfg.checkpoint.with_suffix(SAFETENSORS_SUFFIX)
    if output.suffix != SAFETENSORS_SUFFIX:
        raise ConfigError(f"{output}: name the output *{SAFETENSORS_SUFFIX}")
    checkpoint = load_untrusted(cfg.checkpoint)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{cfg.checkpoint}: holds a {type(checkpoint).__name__}, not a checkpoint dict")
    weights = {key: value for key, value in checkpoint.items() if key not in TRAINING_STATE_KEYS}
    try:
        save_safetensors(weights, output)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{cfg.checkpoint}: cannot be written as safetensors ({error})") from None
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MB)")
    return output


def main(argv: list[str]) -> int:
    to_safetensors(tyro.cli(ToSafetensorsConfig, args=argv))
    return 0


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli())
