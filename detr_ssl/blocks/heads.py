"""The projector / predictor MLP that nearly every self-supervised method puts on its backbone.

One builder for all of them keeps the layer order, and so the state-dict names and the random draws of the
initialisation, identical to the hand-written ``nn.Sequential`` it replaces: DenseCL's
``Linear -> ReLU -> Linear`` is ``mlp(c, h, d)`` and SwAV's ``Linear -> BN -> ReLU -> Linear`` is
``mlp(c, h, d, norm="bn")``. With ``conv=True`` every layer is a 1x1 convolution (with ``BatchNorm2d``), the
dense heads of DenseCL and PixPro, applied at every location of a feature map.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = ["mlp"]


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    norm: Literal["bn", "none"] = "none",
    final_norm: bool = False,
    conv: bool = False,
    bias: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``[Linear -> (BatchNorm) -> activation] * (num_layers - 1) -> Linear (-> BatchNorm without affine)``.

    Args:
        in_dim, hidden_dim, out_dim: input, hidden and output widths (``hidden_dim`` unused for one layer).
        num_layers: number of linear (or 1x1 conv) layers, at least 1.
        norm: ``"bn"`` puts a BatchNorm after every hidden layer.
        final_norm: a BatchNorm with ``affine=False`` after the last layer (SimSiam's projector).
        conv: 1x1 ``Conv2d`` and ``BatchNorm2d`` instead of ``Linear`` and ``BatchNorm1d``.
        bias: whether the linear / conv layers have a bias.
        activation: the non-linearity after every hidden layer (DINO's head: ``nn.GELU``).

    Layers are created in sequence order, so seeding the RNG gives the same weights as the equivalent
    hand-written ``nn.Sequential``.
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
    if norm not in ("bn", "none"):
        raise ValueError(f"norm must be 'bn' or 'none', got {norm!r}")

    def linear(width_in: int, width_out: int) -> nn.Module:
        return nn.Conv2d(width_in, width_out, 1, bias=bias) if conv else nn.Linear(width_in, width_out, bias=bias)

    def batch_norm(width: int, affine: bool = True) -> nn.Module:
        return nn.BatchNorm2d(width, affine=affine) if conv else nn.BatchNorm1d(width, affine=affine)

    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers.append(linear(width, hidden_dim))
        if norm == "bn":
            layers.append(batch_norm(hidden_dim))
        layers.append(nn.ReLU(inplace=True) if activation is nn.ReLU else activation())
        width = hidden_dim
    layers.append(linear(width, out_dim))
    if final_norm:
        layers.append(batch_norm(out_dim, affine=False))
    return nn.Sequential(*layers)
