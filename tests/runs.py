"""What tests of training runs share: a folder of demo photos to train on, and the scalars a run logged."""

from __future__ import annotations

import csv
from pathlib import Path


def copy_photos(demo_photos: Path, folder: Path, count: int) -> Path:
    """``folder`` (created) holding the first ``count`` demo photos."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(demo_photos.iterdir())[:count]:
        (folder / photo.name).write_bytes(photo.read_bytes())
    return folder


def scalar_histories(run_dir: Path) -> dict[str, list[float]]:
    """Every tag of ``run_dir/scalars.csv`` -> its values in logging order."""
    histories: dict[str, list[float]] = {}
    with (Path(run_dir) / "scalars.csv").open() as handle:
        for row in csv.DictReader(handle):
            histories.setdefault(row["tag"], []).append(float(row["value"]))
    return histories
