"""Prediction heads shared by the detector and the pretext tasks."""

from __future__ import annotations

import math

from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x


def class_head(hidden_dim: int, num_classes: int, prior_prob: float = 0.01) -> nn.Linear:
    """Linear classifier whose bias starts every class at ``prior_prob`` (stabilises focal loss)."""
    head = nn.Linear(hidden_dim, num_classes)
    nn.init.constant_(head.bias, -math.log((1 - prior_prob) / prior_prob))
    return head


def box_head(hidden_dim: int, size_bias: float = -2.0) -> MLP:
    """3-layer MLP predicting a box offset in logit space.

    Its output layer starts at zero except for the (w, h) biases, ``size_bias``: -2 starts boxes small
    (about 0.12 of the image) when the reference is a point. The detector decides which of its heads get
    it (see :class:`~detr_ssl.models.deformable_detr.DeformableDETR`).
    """
    head = MLP(hidden_dim, hidden_dim, 4, 3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    nn.init.constant_(head.layers[-1].bias[2:], size_bias)
    return head
