"""The key queue: ring-buffer order, overflow, dtype, checkpointing, and two processes sharing one queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detr_ssl.blocks.queue import KeyQueue
from launch import FORKED_GLOO, run_in_two_processes


def _keys(start: int, count: int, dim: int = 3) -> torch.Tensor:
    """Rows whose first entry is their number: easy to follow through the ring."""
    keys = torch.zeros(count, dim)
    keys[:, 0] = torch.arange(start, start + count, dtype=torch.float32)
    return keys


def test_starts_as_the_seeded_random_unit_vectors() -> None:
    torch.manual_seed(0)
    queue = KeyQueue(6, 4)
    torch.manual_seed(0)
    assert torch.equal(queue.keys, F.normalize(torch.randn(6, 4), dim=1))
    assert queue.pointer.item() == 0 and queue.pointer.dtype == torch.long


def test_push_wraps_around_over_the_oldest_keys() -> None:
    queue = KeyQueue(5, 3)
    queue.push(_keys(1, 3))
    queue.push(_keys(4, 3))  # rows 3, 4 then 0
    assert queue.keys[:, 0].tolist() == [6, 2, 3, 4, 5] and queue.pointer.item() == 1
    queue.push(_keys(7, 2))
    assert queue.keys[:, 0].tolist() == [6, 7, 8, 4, 5] and queue.pointer.item() == 3


def test_push_of_more_keys_than_fit_keeps_the_newest() -> None:
    queue = KeyQueue(4, 3)
    queue.push(_keys(1, 1))
    queue.push(_keys(10, 6))  # only 12..15 survive, written from the pointer (row 1) on
    assert queue.keys[:, 0].tolist() == [15, 12, 13, 14] and queue.pointer.item() == 1


def test_push_casts_to_the_queue_dtype_and_snapshot_is_a_copy() -> None:
    queue = KeyQueue(4, 3)
    snapshot = queue.snapshot()
    queue.push(_keys(1, 2).double())
    assert queue.keys.dtype == torch.float32 and queue.keys[:2, 0].tolist() == [1, 2]
    assert not torch.equal(snapshot, queue.keys)
    half = KeyQueue(4, 3).half()
    half.push(_keys(1, 2))
    assert half.keys.dtype == torch.float16 and half.keys[:2, 0].tolist() == [1, 2]


def test_state_dict_resumes_the_queue() -> None:
    queue = KeyQueue(4, 3)
    queue.push(_keys(1, 3))
    resumed = KeyQueue(4, 3)
    resumed.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"keys", "pointer"}
    resumed.push(_keys(9, 2))
    queue.push(_keys(9, 2))
    assert torch.equal(resumed.keys, queue.keys) and resumed.pointer.item() == queue.pointer.item() == 1


def _push_worker(rank: int, out: str, batches: list[torch.Tensor], splits: list[int]) -> None:
    torch.manual_seed(0)
    queue = KeyQueue(7, 3)
    for batch, split in zip(batches, splits):
        queue.push(batch[:split] if rank == 0 else batch[split:])
    torch.save(queue.state_dict(), f"{out}/{rank}.pt")


@FORKED_GLOO
@pytest.mark.timeout(60)
@pytest.mark.parametrize("splits", [[2, 2, 2], [1, 4, 0]], ids=["equal", "ragged"])
def test_two_processes_hold_the_queue_of_one_process_pushing_both_parts(tmp_path: Path, splits: list[int]) -> None:
    # 3 pushes of 4 keys into 7 rows, split between the processes (ragged: 1 + 3, 4 + 0, 0 + 4 keys, as
    # proposal counts differ); the third push wraps around.
    batches = [_keys(4 * step + 1, 4) for step in range(3)]
    run_in_two_processes(_push_worker, tmp_path, str(tmp_path), batches, splits)
    torch.manual_seed(0)
    single = KeyQueue(7, 3)
    for batch in batches:
        single.push(batch)
    assert single.keys[:, 0].tolist() == [8, 9, 10, 11, 12, 6, 7]
    for rank in range(2):
        state = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(state["keys"], single.keys) and state["pointer"].item() == single.pointer.item()
