"""Atomic file writes: a reader, or a crash, sees either the old file or the complete new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], durable: bool = False) -> None:
    """Calls ``write`` on a temporary file in ``path``'s folder, then renames it over ``path``.

    Args:
        write: fills the open binary file.
        durable: also fsync before the rename (checkpoints: survive a power cut, not only a kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    """``data`` as JSON (UTF-8, trailing newline), written atomically."""
    text = json.dumps(data, indent=indent) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
