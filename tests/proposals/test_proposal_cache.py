"""The proposal cache: keyed by image bytes and settings, atomic writes, corrupt entries detected."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr_ssl.proposals import ProposalCache, ProposalCacheWarning, ProposalSettings, image_digest
from detr_ssl.proposals.cache import ENTRY_SUFFIX

BOXES = np.array([[0, 1, 10, 12], [2.5, 3, 7, 9.25]], dtype=np.float32)


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
    return path


def _cache(tmp_path: Path, **settings: object) -> ProposalCache:
    return ProposalCache(tmp_path / "cache", ProposalSettings(**settings))


def test_put_then_get_round_trips(tmp_path: Path, image_file: Path) -> None:
    cache = _cache(tmp_path)
    assert cache.get(image_file) is None and not cache.contains(image_file)
    entry = cache.put(image_file, BOXES)
    assert entry == cache.folder / entry.parent.name / f"{image_digest(image_file)}{ENTRY_SUFFIX}"
    np.testing.assert_array_equal(cache.get(image_file), BOXES)
    assert cache.contains(image_file)
    settings = json.loads((cache.folder / "settings.json").read_text())
    assert settings["fingerprint"] == cache.settings.fingerprint() and settings["top_k"] == 30


def test_no_boxes_is_a_valid_entry(tmp_path: Path, image_file: Path) -> None:
    cache = _cache(tmp_path)
    cache.put(image_file, np.zeros((0, 4), dtype=np.float32))
    assert cache.get(image_file).shape == (0, 4)


def test_a_changed_pixel_is_a_miss(tmp_path: Path, image_file: Path) -> None:
    cache = _cache(tmp_path)
    cache.put(image_file, BOXES)
    pixels = np.asarray(Image.open(image_file)).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(image_file)
    assert cache.get(image_file) is None


def test_other_settings_are_a_miss(tmp_path: Path, image_file: Path) -> None:
    _cache(tmp_path).put(image_file, BOXES)
    assert _cache(tmp_path, top_k=10).get(image_file) is None
    assert _cache(tmp_path, mode="quality").get(image_file) is None
    np.testing.assert_array_equal(_cache(tmp_path).get(image_file), BOXES)


def test_known_digest_skips_reading_the_image(tmp_path: Path, image_file: Path) -> None:
    cache = _cache(tmp_path)
    digest = image_digest(image_file)
    cache.put(image_file, BOXES, digest=digest)
    image_file.unlink()  # hashing it again would now fail
    np.testing.assert_array_equal(cache.get(image_file, digest=digest), BOXES)


def _damage_truncate(data: bytes) -> bytes:
    return data[: len(data) - 5]


def _damage_flip_a_box_bit(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[70] ^= 0x10
    return bytes(damaged)


def _damage_empty(data: bytes) -> bytes:
    return b""


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_flip_a_box_bit, _damage_empty])
def test_a_damaged_entry_warns_with_its_file_and_is_a_miss(tmp_path: Path, image_file: Path, damage) -> None:
    cache = _cache(tmp_path)
    entry = cache.put(image_file, BOXES)
    entry.write_bytes(damage(entry.read_bytes()))
    with pytest.warns(ProposalCacheWarning, match=str(entry)):
        assert cache.get(image_file) is None
    cache.put(image_file, BOXES)  # overwriting repairs it
    np.testing.assert_array_equal(cache.get(image_file), BOXES)


def test_an_entry_of_another_image_is_detected(tmp_path: Path, image_file: Path) -> None:
    cache = _cache(tmp_path)
    other = tmp_path / "other.png"
    Image.new("RGB", (8, 8), "red").save(other)
    stray = cache.put(other, BOXES)
    target = cache.entry_path(image_digest(image_file))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stray, target)
    with pytest.warns(ProposalCacheWarning, match="another image"):
        assert cache.get(image_file) is None


def test_a_failed_write_leaves_neither_entry_nor_temporary_file(
    tmp_path: Path, image_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(tmp_path)
    cache.put(image_file, BOXES[:1])  # an older valid entry: a failed overwrite must keep it intact

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put(image_file, BOXES)
    monkeypatch.undo()
    entry = cache.entry_path(image_digest(image_file))
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]
    np.testing.assert_array_equal(cache.get(image_file), BOXES[:1])


def test_leftover_temporary_files_are_not_entries(tmp_path: Path, image_file: Path) -> None:
    cache = _cache(tmp_path)
    digest = image_digest(image_file)
    folder = cache.entry_path(digest).parent
    folder.mkdir(parents=True)
    (folder / f".{digest}.0123abcd.tmp").write_bytes(b"half an entry")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(image_file) is None
