"""Data loading that stays reproducible across restarts and worker counts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class SeededAugmentation(Dataset):
    """Runs the wrapped dataset's random transforms under a seed derived from (seed, epoch, index).

    Augmentation then depends neither on the number of workers nor on how far an earlier,
    interrupted run got, which is what makes ``--resume`` reproduce an uninterrupted run exactly.
    The global RNG of the calling process is left untouched.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}:{index}".encode(), digest_size=8).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
            return self.dataset[index]


def training_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int,
                    collate_fn: Callable[[list[Any]], Any]) -> DataLoader:
    """The shuffled training loader over ``SeededAugmentation(dataset, seed)`` (its ``.dataset``).

    Its generator is private: creating an iterator draws a worker seed from it, and drawing from the
    global generator instead would shift dropout after a mid-epoch resume.
    """
    return DataLoader(SeededAugmentation(dataset, seed), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers, collate_fn=collate_fn, drop_last=False,
                      generator=torch.Generator().manual_seed(seed))
