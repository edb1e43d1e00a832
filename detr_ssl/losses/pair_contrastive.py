"""Pair association loss of Pair DETR: InfoNCE between the corner and center embeddings of matched objects.

Reference: S. M. Iranmanesh, X. Chen, K.-C. Lien, "Pair DETR: Contrastive Learning Speeds Up DETR
Training", arXiv:2210.16476, 2022.

Every corner query and every center query emits a keypoint embedding. For the ``N`` objects the matcher
paired with a (corner query, center query) pair, the corner embedding of object ``i`` must pick out the
center embedding of object ``i`` among the ``N`` centers (and, symmetrically, the other way round): a
cross-entropy over cosine similarities scaled by a temperature, the other objects acting as negatives.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.distributed import is_distributed, world_size

__all__ = ["pair_infonce"]


def pair_infonce(corner_embed: Tensor, center_embed: Tensor, temperature: float = 0.1, symmetric: bool = True,
                 gather_across_processes: bool = False) -> Tensor:
    """InfoNCE loss pairing row ``i`` of ``corner_embed`` with row ``i`` of ``center_embed``.

    ``logits = normalize(corner) @ normalize(center).T / temperature`` and the loss is the cross-entropy of
    each row against its own column (positives on the diagonal), averaged over rows. It is bounded below by
    ``log(1 + (N - 1) * exp(-2 / temperature))`` (reachable for ``N <= 2`` only); ``N <= E`` orthogonal pairs,
    each pair's two embeddings parallel, give ``log(1 + (N - 1) * exp(-1 / temperature))``.

    Args:
        corner_embed: ``(N, E)`` embeddings of the matched corner queries, gathered over the batch's images.
        center_embed: ``(N, E)`` embeddings of the matched center queries, row ``i`` the same object as
            ``corner_embed[i]``.
        temperature: ``> 0``; lower sharpens the softmax.
        symmetric: average the corner -> center and center -> corner directions (else corner -> center only).
        gather_across_processes: when ``torch.distributed`` is initialised, also use the pairs of every
            other process as negatives (their embeddings are constants here: gradient flows only into this
            process's rows). Every process must then call this function, even with ``N = 0``, as it runs
            collectives. Without a process group it changes nothing.
    Returns:
        float32 scalar: 0 when a single pair takes part (it has no negative), and 0 for ``N = 0``, then
        still attached to the inputs' graph so that every parameter receives a (zero) gradient.

    >>> embed = torch.eye(3)
    >>> round(float(pair_infonce(embed, embed)), 4)  # matched pairs coincide, orthogonal to the others
    0.0001
    >>> round(float(pair_infonce(embed, embed[[1, 2, 0]])), 4)  # every corner paired with a wrong center
    10.0001
    """
    if corner_embed.ndim != 2 or corner_embed.shape != center_embed.shape:
        raise ValueError(f"corner_embed {tuple(corner_embed.shape)} and center_embed {tuple(center_embed.shape)} "
                         "must both be (N, E)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    corner = F.normalize(corner_embed.float(), dim=-1)
    center = F.normalize(center_embed.float(), dim=-1)
    all_corner, all_center, offset = corner, center, 0
    if gather_across_processes and is_distributed():
        gathered, offset = _gather_keeping_local_grad(torch.cat((corner, center), dim=-1))
        all_corner, all_center = gathered.split(corner.shape[-1], dim=-1)
    if len(corner) == 0:
        return (corner.sum() + center.sum()) * 0.0

    positives = torch.arange(offset, offset + len(corner), device=corner.device)
    loss = F.cross_entropy(corner @ all_center.T / temperature, positives)
    if symmetric:
        loss = (loss + F.cross_entropy(center @ all_corner.T / temperature, positives)) / 2
    return loss


def _gather_keeping_local_grad(rows: Tensor) -> tuple[Tensor, int]:
    """Every process's ``(N_r, D)`` rows, in rank order, and the row where this process's block starts.

    Processes may hold different ``N_r`` (images have different numbers of objects), so the counts are
    exchanged first and each block is padded to the largest for ``all_gather``. The gathered copies carry no
    gradient; this process's block is put back as ``rows`` itself so that its gradient flows.
    """
    count = torch.tensor([len(rows)], device=rows.device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(size) for size in counts]
    rank = dist.get_rank()
    if max(sizes) == 0:
        return rows, 0
    padded = rows.new_zeros((max(sizes), rows.shape[-1]))
    padded[: len(rows)] = rows.detach()
    blocks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(blocks, padded)
    trimmed = [block[:size] for block, size in zip(blocks, sizes)]
    trimmed[rank] = rows
    return torch.cat(trimmed), sum(sizes[:rank])
