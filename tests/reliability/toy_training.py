"""A dataset small enough to train a 1-parameter regression through the real Trainer."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class Numbers(Dataset):
    """Sample ``i`` is the tensor ``[i]``."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Tensor:
        return torch.tensor([float(index)])
