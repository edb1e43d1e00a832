"""DINO's self-distillation loss (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021), as SCFS releases it (skyoux/scfs, ``models/scfs.py``).

The teacher's outputs are centred (a running mean of its outputs is subtracted) and sharpened (a low
temperature), then softmaxed into targets; the student's outputs of every other view are softmaxed at a
higher temperature and pulled towards them by cross-entropy. Centring keeps one dimension from dominating,
sharpening keeps the targets from becoming uniform; together they avoid collapse without negatives. The
centre is a buffer updated after each loss from the batch mean of the teacher's outputs, summed over every
process, so all processes hold the same centre and P processes of B images give the centre of one of P*B.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ssl.distributed import all_reduce_sum, world_size

__all__ = ["DinoLoss", "soft_cross_entropy", "teacher_temperature"]


def teacher_temperature(epoch: int, start: float, end: float, warmup_epochs: int) -> float:
    """The teacher temperature of ``epoch``: ``warmup_epochs`` values evenly spaced from ``start`` to
    ``end`` (both included, as ``numpy.linspace``), then ``end`` for good (also past the planned run)."""
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)


def soft_cross_entropy(targets: Tensor, student_logits: Tensor, student_temperature: float) -> Tensor:
    """Mean over rows of ``-sum_k targets_k * log softmax(student_logits / student_temperature)_k``."""
    log_probabilities = F.log_softmax(student_logits / student_temperature, dim=-1)
    return torch.sum(-targets * log_probabilities, dim=-1).mean()


class DinoLoss(nn.Module):
    """Cross-entropy from the centred, sharpened teacher outputs of each global view to the student outputs
    of every other view, averaged over those pairs; the centre (a ``(1, dim)`` buffer, zeros at first) is
    updated after each loss while the module is in training mode.

    Args:
        dim: width of the outputs.
        student_temperature: the student's softmax temperature (released: 0.1).
        center_momentum: centre <- momentum * centre + (1 - momentum) * batch mean (released: 0.9).
    """

    center: Tensor

    def __init__(self, dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, dim))

    def targets(self, teacher_logits: Tensor, temperature: float) -> Tensor:
        """``softmax((teacher - centre) / temperature)``, without gradient."""
        return F.softmax((teacher_logits - self.center) / temperature, dim=-1).detach()

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor], temperature: float) -> Tensor:
        """The loss of one batch.

        Args:
            student: ``(B, dim)`` outputs per view, the teacher's views first in the same order (view ``v``
                of ``teacher`` and of ``student`` is the same crop, so that pair is skipped).
            teacher: ``(B, dim)`` teacher outputs per global view.
            temperature: the teacher's temperature (:func:`teacher_temperature`).
        """
        if len(student) <= 1 or len(teacher) > len(student):
            raise ValueError(f"need more student views than one and at least as many as the teacher's; got "
                             f"{len(student)} student and {len(teacher)} teacher views")
        all_teacher = torch.cat(list(teacher))
        targets = self.targets(all_teacher, temperature).chunk(len(teacher))
        total = student[0].new_zeros(())
        pairs = 0
        for index, target in enumerate(targets):
            for view, logits in enumerate(student):
                if view != index:
                    total = total + soft_cross_entropy(target, logits, self.student_temperature)
                    pairs += 1
        if self.training:
            self.update_center(all_teacher)
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """EMA of the centre towards the mean teacher output of the batch over every process."""
        batch_center = all_reduce_sum(teacher_logits.sum(dim=0, keepdim=True)) / (len(teacher_logits) * world_size())
        self.center.copy_(self.center * self.center_momentum + batch_center * (1 - self.center_momentum))
