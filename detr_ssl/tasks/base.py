"""The task interface: what one training objective owns (targets, extra heads, loss)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from torch import Tensor, nn

from detr_ssl.datasets.collate import Batch


class LossResult(Protocol):
    """What a task's loss returns: the scalar to back-propagate and named terms to log."""

    total: Tensor
    terms: dict[str, Tensor]


class Task(ABC):
    """A training objective. The engine calls :meth:`compute_loss` once per batch and knows nothing else."""

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: Batch) -> LossResult:
        """Runs the model on ``batch`` and returns the loss."""
