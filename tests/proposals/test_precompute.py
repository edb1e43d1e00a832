"""precompute() and scripts/precompute_proposals.py: counts, failures by name, parallel = serial, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from detr_ssl.cli.common import run_main
from detr_ssl.cli.precompute_proposals import main
from detr_ssl.proposals import ProposalCache, ProposalSettings, precompute
from detr_ssl.proposals.cache import ENTRY_SUFFIX

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ProposalSettings()


def _entries(cache: ProposalCache) -> dict[str, bytes]:
    """Every committed entry, by its path relative to the settings folder."""
    return {str(p.relative_to(cache.folder)): p.read_bytes() for p in cache.folder.rglob(f"*{ENTRY_SUFFIX}")}


def test_counts_and_a_corrupt_image_is_reported_by_name(
    photo_folder: Callable[[int], Path], tmp_path: Path
) -> None:
    folder = photo_folder(4)
    broken = folder / "broken.jpg"
    broken.write_bytes((folder / "astronaut.jpg").read_bytes()[:2000])
    paths = sorted(folder.iterdir())
    cache = ProposalCache(tmp_path / "cache", SETTINGS)
    summary = precompute(paths, cache, workers=1, progress=False)
    assert (summary.computed, summary.cached, summary.total) == (4, 0, 5)
    assert [path for path, _ in summary.failed] == [broken]
    assert str(broken) in summary.failed[0][1] and str(broken) in str(summary)
    again = precompute(paths, cache, workers=1, progress=False)
    assert (again.computed, again.cached, len(again.failed)) == (0, 4, 1)


def test_two_workers_write_the_same_cache_as_one(photo_folder: Callable[[int], Path], tmp_path: Path) -> None:
    paths = sorted(photo_folder(6).iterdir())
    serial = ProposalCache(tmp_path / "serial", SETTINGS)
    parallel = ProposalCache(tmp_path / "parallel", SETTINGS)
    precompute(paths, serial, workers=1, progress=False)
    summary = precompute(paths, parallel, workers=2, progress=False)
    assert summary.computed == 6
    assert len(_entries(serial)) == 6 and _entries(parallel) == _entries(serial)


@pytest.mark.timeout(120)
def test_workers_start_safely_after_this_process_ran_opencv_threads(
    photo_folder: Callable[[int], Path], tmp_path: Path
) -> None:
    """Regression: forked workers that reconfigured OpenCV's inherited thread pool hung forever."""
    paths = sorted(photo_folder(4).iterdir())
    busy = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    original = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        for attempt in range(4):
            cv2.GaussianBlur(busy, (9, 9), 0)  # wakes OpenCV's worker threads in this process
            cache = ProposalCache(tmp_path / f"run{attempt}", SETTINGS)
            assert precompute(paths, cache, workers=2, progress=False).computed == 4
        assert cv2.getNumThreads() == 2  # the parent's setting is restored
    finally:
        cv2.setNumThreads(original)


def test_a_killed_run_resumes_to_the_same_cache(photo_folder: Callable[[int], Path], tmp_path: Path) -> None:
    folder = photo_folder(16)
    reference = ProposalCache(tmp_path / "reference", SETTINGS)
    precompute(sorted(folder.iterdir()), reference, workers=1, progress=False)

    resumed = ProposalCache(tmp_path / "resumed", SETTINGS)
    command = [sys.executable, str(REPO / "scripts" / "precompute_proposals.py"), "--images", str(folder),
               "--cache", str(resumed.root), "--workers", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(resumed.folder.rglob(f"*{ENTRY_SUFFIX}"))) < 3:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the precompute wrote no entries"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    partial = _entries(resumed)
    assert 3 <= len(partial) < 16, "the kill must interrupt the run"

    summary = precompute(sorted(folder.iterdir()), resumed, workers=1, progress=False)
    assert summary.cached == len(partial) and summary.computed == 16 - len(partial) and not summary.failed
    assert _entries(resumed) == _entries(reference)
    leftovers = [p for p in resumed.folder.rglob("*") if p.is_file() and p.suffix != ENTRY_SUFFIX]
    assert all(p.name == "settings.json" or (p.name.startswith(".") and p.suffix == ".tmp") for p in leftovers)


def test_cli_bad_input_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run_main(main, ["--images", str(tmp_path / "missing"), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1 and "missing" in err


def test_cli_summary_and_exit_status(photo_folder: Callable[[int], Path], tmp_path: Path, capsys) -> None:
    folder = photo_folder(2)
    args = ["--images", str(folder), "--cache", str(tmp_path / "cache"), "--workers", "1", "--no-progress",
            "--top-k", "5"]
    assert run_main(main, args) == 0
    assert "2 computed, 0 already cached, 0 failed" in capsys.readouterr().out
    (folder / "zz_broken.png").write_bytes(b"not a png")
    assert run_main(main, args) == 1
    out = capsys.readouterr().out
    assert "0 computed, 2 already cached, 1 failed" in out and "zz_broken.png" in out
    assert (tmp_path / "cache" / ProposalSettings(top_k=5).fingerprint()).is_dir()


def test_cli_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--images", "--cache", "--image-dir", "--workers", "--resize", "--top-k", "--mode", "--seed"):
        assert flag in out, flag
