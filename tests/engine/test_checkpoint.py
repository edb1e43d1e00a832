"""Checkpoints: atomic writes, pruning, resume resolution, untrusted files, non-strict pretrained loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from detr_ssl.engine import checkpoint as ckpt
from detr_ssl.errors import CheckpointError
from detr_ssl.models.checkpoint_io import load_untrusted


def _state(epoch: int) -> dict:
    return {"model": {"w": torch.full((2,), float(epoch))}, "optimizer": {}, "lr_scheduler": {},
            "epoch": epoch, "step": epoch * 10}


def test_save_keeps_latest_and_last_n(tmp_path: Path) -> None:
    for epoch in range(1, 5):
        ckpt.save_training_checkpoint(_state(epoch), tmp_path, epoch, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint.pth", "checkpoint_0003.pth", "checkpoint_0004.pth"]
    assert ckpt.load_training_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 4


def test_latest_is_the_epoch_file_written_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[object] = []
    real_save = torch.save
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, handle: writes.append(obj) or real_save(obj, handle))
    ckpt.save_training_checkpoint(_state(1), tmp_path, 1, keep_last=1)
    ckpt.save_training_checkpoint(_state(2), tmp_path, 2, keep_last=1)  # prunes epoch 1's file
    assert len(writes) == 2
    latest, epoch_file = tmp_path / "checkpoint.pth", tmp_path / "checkpoint_0002.pth"
    assert latest.read_bytes() == epoch_file.read_bytes()
    epoch_file.unlink()  # pruning the epoch file later leaves the latest readable
    assert ckpt.load_training_checkpoint(latest)["epoch"] == 2


def test_latest_is_copied_where_hard_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(source, target):
        raise OSError("operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    ckpt.save_training_checkpoint(_state(1), tmp_path, 1, keep_last=1)
    ckpt.save_training_checkpoint(_state(2), tmp_path, 2, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "checkpoint_0002.pth"]
    assert ckpt.load_training_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 2
    assert (tmp_path / "checkpoint.pth").stat().st_ino != (tmp_path / "checkpoint_0002.pth").stat().st_ino


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pth"
    ckpt.atomic_torch_save(_state(1), path)

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_torch_save(_state(2), path)
    monkeypatch.undo()
    assert ckpt.load_training_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temp file left behind


def test_resolve_resume(tmp_path: Path) -> None:
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None  # nothing yet: start fresh
    ckpt.save_training_checkpoint(_state(1), tmp_path, 1, keep_last=1)
    assert ckpt.resolve_resume("auto", tmp_path) == tmp_path / "checkpoint.pth"
    with pytest.raises(CheckpointError, match="missing.pth"):
        ckpt.resolve_resume(str(tmp_path / "missing.pth"), tmp_path)


def test_not_a_training_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="weights.pth.*missing"):
        ckpt.load_training_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: refused to load"):
        load_untrusted(path)
    raw = tmp_path / "raw.pth"  # a bare pickle stream is refused too, whatever the opcode it trips on
    with raw.open("wb") as handle:
        pickle.dump({"model": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="raw.pth"):
        load_untrusted(raw)


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_untrusted(path)


def test_load_pretrained_drops_mismatched_class_head(tmp_path: Path) -> None:
    source = nn.ModuleDict({"body": nn.Linear(4, 4), "class_head": nn.Linear(4, 91)})
    path = tmp_path / "pretrained.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    target = nn.ModuleDict({"body": nn.Linear(4, 4), "class_head": nn.Linear(4, 5)})
    before = target["class_head"].weight.clone()
    missing, dropped = ckpt.load_pretrained(target, path)
    assert torch.equal(target["body"].weight, source["body"].weight)
    assert torch.equal(target["class_head"].weight, before)
    assert dropped == ["class_head.bias", "class_head.weight"]
    assert missing == ["class_head.bias", "class_head.weight"]


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_are_never_mistaken_for_a_payload_or_crash(tmp_path: Path, seed: int) -> None:
    import random

    path = tmp_path / "junk.pth"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(CheckpointError, match="junk.pth: not a readable PyTorch checkpoint"):
        load_untrusted(path)
