"""A training run or a proposal precompute killed with SIGKILL in the middle of writing loses nothing.

The kill is deterministic: the subprocess (tests/reliability/entries.py) writes half of the file, says so
through a ready file and blocks; the test then kills it. Afterwards the previous checkpoint (cache entries)
must load intact, the half-written temporary file must never be taken for a checkpoint (entry), and
rerunning the same command must finish the job exactly as an uninterrupted run does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from detr_ssl.cli import finetune
from detr_ssl.cli.common import run_main
from detr_ssl.cli.precompute_proposals import main
from detr_ssl.datasets.demo import DemoPaths
from detr_ssl.engine.checkpoint import LATEST, load_training_checkpoint, resolve_resume
from detr_ssl.errors import CheckpointError
from detr_ssl.models.checkpoint_io import load_untrusted
from detr_ssl.proposals import ProposalCache, ProposalSettings, precompute
from detr_ssl.proposals.cache import ENTRY_SUFFIX

ENTRIES = str(Path(__file__).with_name("entries.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _kill_when_ready(command: list[str], ready: Path, cwd: Path, deadline_s: float = 300) -> None:
    """Starts ``command``, waits until it created ``ready`` (it is then blocked mid-write) and SIGKILLs it."""
    process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + deadline_s
        while not ready.exists():
            assert process.poll() is None, f"exited with {process.returncode} before the write: {process.stderr.read()}"
            assert time.monotonic() < deadline, "the subprocess never reached the write"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def _finetune(args: list[str]) -> None:
    """scripts/finetune.py's entry point run in this process with one intra-op thread, as the killed
    subprocess runs (``ENV``): the runs compared here must not differ by their thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_main(finetune.main, args) == 0
    finally:
        torch.set_num_threads(threads)


# -- training checkpoints ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune_args(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoPaths) -> list[str]:
    """4 demo images, batch 4: one step per epoch, 3 epochs, a checkpoint after each, the last 2 kept."""
    import json

    document = json.loads(demo_data.train_json.read_text())
    document["images"] = document["images"][:4]
    kept = {image["id"] for image in document["images"]}
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in kept]
    subset = tmp_path_factory.mktemp("crash_data") / "train.json"
    subset.write_text(json.dumps(document))
    return ["--cpu", "--preset", "demo", "--train-json", str(subset), "--val-json", str(subset),
            "--images", str(demo_data.image_dir), "--num-workers", "0", "--model.dropout", "0.1",
            "--epochs", "3", "--batch-size", "4", "--eval-every", "1000", "--checkpoint-every", "1",
            "--keep-last", "2", "--log-every", "1"]


@pytest.fixture(scope="module")
def uninterrupted(finetune_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final checkpoint of the same run, never killed."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _finetune([*finetune_args, "--output-dir", str(out)])
    return load_training_checkpoint(out / LATEST)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_loses_nothing(
    finetune_args: list[str], uninterrupted: dict, tmp_path: Path
) -> None:
    """Killed while saving epoch 2 (its epoch file; checkpoint.pth then becomes a second name of that file
    by an atomic rename): epoch 1's checkpoint is intact, ``--resume auto`` picks it, and the resumed run
    ends exactly where the uninterrupted one does."""
    nth_save, half_written = 2, "checkpoint_0002.pth"
    out = tmp_path / "run"
    ready = tmp_path / "ready"
    _kill_when_ready([sys.executable, ENTRIES, "slow-checkpoint", str(ready), str(nth_save), "--",
                      *finetune_args, "--output-dir", str(out)], ready, tmp_path)

    partial = list(out.glob(f".{half_written}.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0, sorted(p.name for p in out.iterdir())
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_untrusted(partial[0])  # really half a file...
    assert resolve_resume("auto", out) == out / LATEST  # ...and never a candidate for --resume auto
    previous = load_training_checkpoint(out / LATEST)
    assert (previous["epoch"], previous["step"]) == (1, 1)
    assert not (out / half_written).exists()

    _finetune([*finetune_args, "--output-dir", str(out), "--resume", "auto"])  # the same command again
    final = load_training_checkpoint(out / LATEST)
    assert (final["epoch"], final["step"]) == (3, 3)
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    # Keep-last-N: the latest plus the last 2 epoch files; the half-written file is cleaned up.
    assert sorted(p.name for p in out.glob("*checkpoint*")) == [LATEST, "checkpoint_0002.pth", "checkpoint_0003.pth"]


# -- proposal cache -----------------------------------------------------------------------------------------
def _entries(cache: ProposalCache) -> dict[str, bytes]:
    return {str(p.relative_to(cache.folder)): p.read_bytes() for p in cache.folder.rglob(f"*{ENTRY_SUFFIX}")}


@pytest.fixture
def photos(demo_photos: Path, tmp_path: Path) -> Callable[[int], Path]:
    def make(count: int) -> Path:
        folder = tmp_path / "photos"
        folder.mkdir()
        for source in sorted(demo_photos.iterdir())[:count]:
            shutil.copy(source, folder / source.name)
        return folder

    return make


def test_sigkill_while_writing_a_cache_entry_loses_nothing(
    photos: Callable[[int], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed while writing the 4th of 6 entries: the 3 finished entries are intact, the half-written one is
    not an entry, and rerunning the command computes only the rest, ending byte-identical to a clean run."""
    folder = photos(6)
    settings = ProposalSettings(top_k=10)
    reference = ProposalCache(tmp_path / "reference", settings)
    precompute(sorted(folder.iterdir()), reference, workers=1, progress=False)
    expected = _entries(reference)
    assert len(expected) == 6

    cache = ProposalCache(tmp_path / "cache", settings)
    args = ["--images", str(folder), "--cache", str(cache.root), "--workers", "1", "--no-progress", "--top-k", "10"]
    ready = tmp_path / "ready"
    _kill_when_ready([sys.executable, ENTRIES, "slow-cache", str(ready), "4", "--", *args], ready, tmp_path)

    survived = _entries(cache)
    assert len(survived) == 3 and all(expected[name] == data for name, data in survived.items())
    partial = list(cache.folder.rglob("*.tmp"))
    assert len(partial) == 1 and partial[0].name.startswith(".") and partial[0].stat().st_size > 0
    half_done = partial[0].name.split(".")[1]  # the digest of the image being written
    assert not cache.entry_path(half_done).exists()

    assert run_main(main, args) == 0  # the same command again
    assert "3 computed, 3 already cached, 0 failed" in capsys.readouterr().out
    assert _entries(cache) == expected
