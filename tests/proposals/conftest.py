"""Fixtures for the proposal tests: small folders of real photos (copies of the demo photos)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def photo_folder(demo_photos: Path, tmp_path: Path) -> Callable[[int], Path]:
    """Factory: ``photo_folder(n)`` copies the first ``n`` demo photos (sorted by name) into a fresh folder."""
    counter = iter(range(1_000_000))

    def make(count: int) -> Path:
        sources = sorted(demo_photos.iterdir())[:count]
        assert len(sources) == count, f"the demo has only {len(sources)} photos"
        folder = tmp_path / f"photos{next(counter)}"
        folder.mkdir()
        for source in sources:
            shutil.copy(source, folder / source.name)
        return folder

    return make
