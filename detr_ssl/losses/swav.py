"""SwAV's objective: equal-partition cluster assignments by Sinkhorn-Knopp, predicted across views.

Following Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
(NeurIPS 2020): the prototype scores of a global view are turned into soft codes by a few Sinkhorn-Knopp
iterations that spread the batch evenly over the prototypes; every other view predicts those codes
through a temperature softmax of its own scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ssl.distributed import all_reduce_max, all_reduce_sum

__all__ = ["sinkhorn_knopp", "swapped_prediction_loss"]


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Prototype scores ``(B, K)`` -> transport plan ``(B, K)`` of ``exp(scores / epsilon)`` rescaled
    towards equal partition: each sample's row sums to ``1 / B_total`` exactly, each prototype's column
    to about ``1 / K`` (exactly in the limit of many iterations).

    ``B_total`` is the batch summed over processes: the sums are all-reduced, so a distributed run
    computes the plan of the whole global batch (each process keeps its own rows). Multiply by
    ``B_total`` for per-sample codes that sum to 1.
    """
    scores = scores.detach().float()
    # One shared shift for every process keeps exp() in range without changing the plan.
    plan = torch.exp((scores - all_reduce_max(scores.max())) / epsilon)
    total_samples = all_reduce_sum(torch.tensor(float(scores.shape[0]), device=scores.device))
    num_prototypes = scores.shape[1]
    plan /= all_reduce_sum(plan.sum())
    for _ in range(iterations):
        plan /= all_reduce_sum(plan.sum(dim=0, keepdim=True)) * num_prototypes  # prototypes -> 1/K
        plan /= plan.sum(dim=1, keepdim=True) * total_samples  # samples -> 1/B
    return plan


def swapped_prediction_loss(scores: Sequence[Tensor], codes: Mapping[int, Tensor], temperature: float) -> Tensor:
    """Cross-entropy of every view's softmax(scores / temperature) against the codes of each *other* view.

    Args:
        scores: per view, prototype scores ``(B, K)`` (same images in the same order in every view).
        codes: view index -> soft codes ``(B, K)`` (rows summing to 1) computed from that view.
        temperature: softmax temperature of the predictions.

    Returns the mean over (coded view, predicting view) pairs of the per-sample cross-entropy.
    """
    if len(scores) < 2 or not codes:
        raise ValueError("the swapped prediction needs at least two views and one coded view")
    log_probs = [F.log_softmax(view / temperature, dim=1) for view in scores]
    losses = [-(code * log_probs[other]).sum(dim=1).mean()
              for coded, code in codes.items() for other in range(len(scores)) if other != coded]
    return torch.stack(losses).mean()
