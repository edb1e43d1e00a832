"""Scalar logging to CSV (always) and TensorBoard (optional), main process only; where progress bars show."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from detr_ssl.errors import ConfigError


def progress_bars_off(main_process: bool) -> bool:
    """Progress bars show in the main process only, and not where tqdm's own ``TQDM_DISABLE`` is set (a
    benchmark's worker process, whose output goes to a log file)."""
    return not main_process or bool(os.environ.get("TQDM_DISABLE"))


class ScalarLogger:
    """Appends ``step,tag,value`` rows to ``OUTPUT/scalars.csv`` (long format: new tags need no new
    columns, and a resumed run keeps appending to the same file)."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "scalars.csv"
        fresh = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(["step", "tag", "value"])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install 'detr-ssl[plots]'") from exc
            self._writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for tag, value in scalars.items():
            self._csv.writerow([step, tag, f"{value:.6g}"])
            if self._writer is not None:
                self._writer.add_scalar(tag, value, step)
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._writer is not None:
                self._writer.close()
