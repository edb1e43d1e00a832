"""Atomic file writes: a reader, or a crash, sees either the old file or the complete new one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
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


def atomic_alias(source: str | Path, path: str | Path) -> None:
    """Makes ``path`` a second name of ``source``'s content, atomically: a hard link (no second write of the
    bytes) where the filesystem allows one, a durable copy where it does not. ``source`` must never be
    modified in place afterwards (files written by :func:`atomic_write` are only ever replaced)."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FAT filesystems)
        with open(source, "rb") as original:
            atomic_write(path, lambda handle: shutil.copyfileobj(original, handle), durable=True)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    """``data`` as JSON (UTF-8, trailing newline), written atomically."""
    text = json.dumps(data, indent=indent) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
