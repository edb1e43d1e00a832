"""RegionCL-M's region loss (Xu et al., "RegionCL: Can Simple Region Swapping Contribute to Contrastive
Learning?", 2021): contrast the two regions of a cut-and-paste composite image separately.

Each composite image holds two regions: the *canvas* (its own image outside the pasted box) and the
*paste* (the box, filled from another image of the batch). Each region is a query of MoCo's InfoNCE:
the canvas's positive is the key of its own image, the paste's the key of the image it was cut from. The
negatives are the queue plus the other region of the same composite (detached: it is a fixed negative,
not something this term moves), so the network must tell the two parts of one picture apart.

Every function expects L2-normalised embeddings, so dot products are cosine similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["region_info_nce"]


def region_info_nce(
    canvas: Tensor, paste: Tensor, keys: Tensor, sources: Tensor, queue: Tensor, temperature: float
) -> Tensor:
    """Mean over the ``2B`` region queries (canvases, then pastes) of the cross-entropy of
    ``[q.k+, q.other, q.n_1, ..., q.n_K] / temperature`` with the positive at index 0.

    Args:
        canvas: ``(B, D)`` embedding of each composite's own region (outside the box).
        paste: ``(B, D)`` embedding of each composite's pasted box.
        keys: ``(B, D)`` momentum-encoder keys of the images, in batch order.
        sources: ``(B,)`` index of the image each composite's box was cut from.
        queue: ``(K, D)`` negatives shared by every query.
        temperature: softmax temperature.
    """
    queries = torch.cat((canvas, paste))
    positives = torch.cat((keys, keys[sources]))
    others = torch.cat((paste, canvas)).detach()
    positive = (queries * positives).sum(dim=1, keepdim=True)
    other = (queries * others).sum(dim=1, keepdim=True)
    logits = torch.cat((positive, other, queries @ queue.T), dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(queries), dtype=torch.long, device=queries.device))
