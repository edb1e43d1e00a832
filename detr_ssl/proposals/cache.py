"""On-disk cache of box proposals: one small, self-validating file per image.

Layout::

    <root>/<fingerprint>/settings.json            the ProposalSettings every entry below was computed with
    <root>/<fingerprint>/<digest[:2]>/<digest>.boxes

- ``fingerprint`` is `ProposalSettings.fingerprint()`, e.g. ``ss1-fast-128px-top30-seed0``: other settings
  live in another folder, so changing them is a miss, never a mix.
- ``digest`` is the BLAKE2b-256 hex digest of the image *file's bytes*: an edited image is a miss, and
  identical files share one entry wherever they are. Renaming or moving images keeps their entries.

An entry is little-endian binary::

    bytes      field
    8          magic ``DSSLBOX1`` (format version 1)
    32         BLAKE2b-256 of the image file (the digest, raw)
    16         BLAKE2b-128 of the settings fingerprint
    4          k, uint32: number of boxes (may be 0)
    16 * k     boxes, float32 (k, 4): (x0, y0, x1, y1) in pixels of the upright image (EXIF applied)
    16         BLAKE2b-128 of all the bytes above

A reader checks the length, magic, image digest, fingerprint and checksum. Any mismatch (a truncated,
corrupted or misplaced file) is a miss and a `ProposalCacheWarning` naming the file; the next `put`
overwrites it.

Writes are atomic: an entry is written to ``.<digest>.<random>.tmp`` in its folder, then renamed over the
entry with `os.replace`. A killed writer leaves at most such a temporary file, which is never read as an
entry (and may be deleted when no writer runs). No fsync: if a power cut leaves a renamed entry short, the
checksum catches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import warnings
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from detr_ssl.errors import DataError
from detr_ssl.proposals.selective_search import ALGORITHM_VERSION, ProposalSettings

__all__ = ["ENTRY_SUFFIX", "ProposalCache", "ProposalCacheWarning", "image_digest"]

#: File-name suffix of cache entries (temporary files end in ``.tmp`` instead).
ENTRY_SUFFIX = ".boxes"

_MAGIC = b"DSSLBOX1"
_HEADER = struct.Struct("<8s32s16sI")  # magic, image digest, fingerprint hash, box count
_CHECKSUM_BYTES = 16
_READ_CHUNK = 1 << 20


class ProposalCacheWarning(UserWarning):
    """A cache entry was unreadable, or images had to be searched on the fly."""


def image_digest(path: str | Path) -> str:
    """BLAKE2b-256 hex digest of a file's bytes: the cache key of an image.

    Raises:
        DataError: the file cannot be read.
    """
    digest = hashlib.blake2b(digest_size=32)
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_READ_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise DataError(f"{path}: cannot read image file ({error.strerror or error})") from None
    return digest.hexdigest()


class ProposalCache:
    """Proposals of images computed with one `ProposalSettings`, stored under ``root`` (format above).

    Every method takes the image's path; pass ``digest=`` (from `image_digest`) when you already have it,
    to skip re-reading and hashing the file.
    """

    def __init__(self, root: str | Path, settings: ProposalSettings) -> None:
        self.root = Path(root)
        self.settings = settings
        self.folder = self.root / settings.fingerprint()
        self._fingerprint_hash = hashlib.blake2b(settings.fingerprint().encode(), digest_size=16).digest()
        self._settings_written = False

    def entry_path(self, digest: str) -> Path:
        """Where the entry of the image with this digest lives (whether or not it exists)."""
        return self.folder / digest[:2] / f"{digest}{ENTRY_SUFFIX}"

    def get(self, image_path: str | Path, *, digest: str | None = None) -> np.ndarray | None:
        """The cached float32 ``(k, 4)`` boxes of the image, or None when absent or invalid (with a warning)."""
        digest = digest or image_digest(image_path)
        path = self.entry_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        boxes, problem = self._decode(data, bytes.fromhex(digest))
        if problem is not None:
            warnings.warn(
                f"{path}: invalid proposal cache entry for {image_path} ({problem}); ignoring it, it will be "
                "recomputed",
                ProposalCacheWarning,
                stacklevel=2,
            )
        return boxes

    def contains(self, image_path: str | Path, *, digest: str | None = None) -> bool:
        """True when a valid entry exists (an invalid one warns, as in `get`)."""
        return self.get(image_path, digest=digest) is not None

    def put(self, image_path: str | Path, boxes: np.ndarray, *, digest: str | None = None) -> Path:
        """Store (or overwrite) the boxes of an image atomically; returns the entry's path."""
        boxes = np.ascontiguousarray(boxes, dtype="<f4")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (k, 4), got {boxes.shape}")
        digest = digest or image_digest(image_path)
        if not self._settings_written:
            self._write_settings()
        body = _HEADER.pack(_MAGIC, bytes.fromhex(digest), self._fingerprint_hash, len(boxes)) + boxes.tobytes()
        path = self.entry_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, body + _checksum(body), prefix=f".{digest}.")
        return path

    def _decode(self, data: bytes, digest: bytes) -> tuple[np.ndarray | None, str | None]:
        """``(boxes, None)`` for a valid entry, ``(None, what is wrong)`` otherwise."""
        if len(data) < _HEADER.size + _CHECKSUM_BYTES:
            return None, f"truncated: {len(data)} bytes"
        magic, stored_digest, fingerprint_hash, count = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            return None, "not a proposal cache entry"
        expected_size = _HEADER.size + 16 * count + _CHECKSUM_BYTES
        if len(data) != expected_size:
            return None, f"truncated or padded: {len(data)} bytes, expected {expected_size} for {count} boxes"
        if _checksum(data[:-_CHECKSUM_BYTES]) != data[-_CHECKSUM_BYTES:]:
            return None, "checksum mismatch"
        if stored_digest != digest:
            return None, "entry belongs to another image"
        if fingerprint_hash != self._fingerprint_hash:
            return None, "entry was computed with other settings"
        boxes = np.frombuffer(data, dtype="<f4", count=4 * count, offset=_HEADER.size).reshape(count, 4)
        return boxes.astype(np.float32), None

    def _write_settings(self) -> None:
        """Write ``settings.json`` (a description for people; entries validate themselves) once."""
        path = self.folder / "settings.json"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            description = {
                "fingerprint": self.settings.fingerprint(),
                **asdict(self.settings),
                "algorithm_version": ALGORITHM_VERSION,
                "opencv_version": cv2.__version__,
                "entry_format": "DSSLBOX1 (see detr_ssl/proposals/cache.py)",
            }
            _atomic_write(path, (json.dumps(description, indent=1) + "\n").encode(), prefix=".settings.")
        self._settings_written = True


def _checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_CHECKSUM_BYTES).digest()


def _atomic_write(path: Path, data: bytes, prefix: str) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it onto ``path``."""
    tmp_name = path.parent / f"{prefix}{secrets.token_hex(8)}.tmp"
    # os.open rather than tempfile.mkstemp: mkstemp's 0600 mode would hide a shared cache from other users.
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise
