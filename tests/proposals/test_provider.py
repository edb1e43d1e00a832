"""ProposalProvider: cache first; on a miss compute and store (one warning), or refuse with a clear error."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detr_ssl.datasets import read_rgb_image
from detr_ssl.errors import DataError
from detr_ssl.proposals import (
    ProposalCache,
    ProposalCacheWarning,
    ProposalProvider,
    ProposalSettings,
    image_digest,
    selective_search_boxes,
)

SETTINGS = ProposalSettings()


def _on_the_fly(path: Path) -> np.ndarray:
    return selective_search_boxes(np.asarray(read_rgb_image(path)), SETTINGS)


def test_cached_boxes_equal_on_the_fly_ones(photo_folder: Callable[[int], Path], tmp_path: Path) -> None:
    paths = sorted(photo_folder(3).iterdir())
    cache = ProposalCache(tmp_path / "cache", SETTINGS)
    provider = ProposalProvider(SETTINGS, cache)
    with pytest.warns(ProposalCacheWarning):
        first = [provider.boxes(path) for path in paths]
    assert all(cache.contains(path) for path in paths)
    reader = ProposalProvider(SETTINGS, ProposalCache(tmp_path / "cache", SETTINGS), require_cache=True)
    for path, computed in zip(paths, first):
        expected = _on_the_fly(path)
        np.testing.assert_array_equal(computed, expected)
        np.testing.assert_array_equal(reader.boxes(path), expected)
    assert reader.misses == 0


def test_many_misses_warn_once_and_are_counted(photo_folder: Callable[[int], Path], tmp_path: Path) -> None:
    paths = sorted(photo_folder(4).iterdir())
    provider = ProposalProvider(SETTINGS, ProposalCache(tmp_path / "cache", SETTINGS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths:
            provider.boxes(path)
        for path in paths:
            provider.boxes(path)  # now cached: no miss
    assert [w.category for w in caught] == [ProposalCacheWarning]
    assert "scripts/precompute_proposals.py" in str(caught[0].message)
    assert provider.misses == 4


def test_without_a_cache_every_call_computes(photo_folder: Callable[[int], Path]) -> None:
    path = sorted(photo_folder(1).iterdir())[0]
    provider = ProposalProvider(SETTINGS)
    with pytest.warns(ProposalCacheWarning):
        np.testing.assert_array_equal(provider.boxes(path), _on_the_fly(path))
    np.testing.assert_array_equal(provider.boxes(path, read_rgb_image(path)), _on_the_fly(path))
    assert provider.misses == 2


def test_require_cache_names_the_image_the_cache_and_the_fix(
    photo_folder: Callable[[int], Path], tmp_path: Path
) -> None:
    path = sorted(photo_folder(1).iterdir())[0]
    cache = ProposalCache(tmp_path / "cache", SETTINGS)
    provider = ProposalProvider(SETTINGS, cache, require_cache=True)
    with pytest.raises(DataError) as error:
        provider.boxes(path)
    message = str(error.value)
    assert str(path) in message and str(cache.folder) in message and "precompute_proposals.py" in message
    assert not cache.folder.exists()  # nothing was computed or written


def test_a_corrupt_entry_is_recomputed_and_repaired(photo_folder: Callable[[int], Path], tmp_path: Path) -> None:
    path = sorted(photo_folder(1).iterdir())[0]
    cache = ProposalCache(tmp_path / "cache", SETTINGS)
    entry = cache.put(path, np.zeros((3, 4), dtype=np.float32))
    entry.write_bytes(entry.read_bytes()[:-1])
    provider = ProposalProvider(SETTINGS, cache)
    with pytest.warns(ProposalCacheWarning) as caught:
        boxes = provider.boxes(path)
    assert any(str(entry) in str(w.message) for w in caught)
    np.testing.assert_array_equal(boxes, _on_the_fly(path))
    np.testing.assert_array_equal(cache.get(path, digest=image_digest(path)), boxes)


def test_provider_survives_pickling(photo_folder: Callable[[int], Path], tmp_path: Path) -> None:
    path = sorted(photo_folder(1).iterdir())[0]
    cache = ProposalCache(tmp_path / "cache", SETTINGS)
    cache.put(path, _on_the_fly(path))
    clone = pickle.loads(pickle.dumps(ProposalProvider(SETTINGS, cache, require_cache=True)))
    np.testing.assert_array_equal(clone.boxes(path), _on_the_fly(path))


def test_settings_must_match_the_cache(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache holds"):
        ProposalProvider(ProposalSettings(top_k=5), ProposalCache(tmp_path, SETTINGS))
    with pytest.raises(ValueError, match="needs a cache"):
        ProposalProvider(SETTINGS, require_cache=True)
