"""Dropout whose random mask costs a fraction of ``nn.Dropout``'s on CPU."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from detr_ssl.models.eager import running_eagerly

#: Random bits behind each element's keep-or-drop draw.
_BITS = 15
_LEVELS = 1 << _BITS


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """A bool mask of ``shape``, each element False (dropped) with probability ``round(p * 2**15) / 2**15``
    (within 2e-5 of ``p``), drawn from PyTorch's default generator.

    PyTorch's CPU generator is one sequential Mersenne Twister, and ``nn.Dropout`` draws a full random
    number per element, which made dropout a tenth of a Deformable DETR training step on two cores. Here
    each element uses 15 bits of one 16-bit quarter of a 64-bit draw (the generator's 64-bit integers have
    63 random bits: the top quarter's sign bit is always 0, so every quarter keeps its 15 low bits), four
    elements per draw.
    """
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()
    quarters = words.view(torch.int16)[:count].bitwise_and_(_LEVELS - 1)
    return (quarters >= round(p * _LEVELS)).view(shape)


class _KeepAndScale(torch.autograd.Function):
    """``input * keep * scale`` whose backward is ``grad * keep * scale``: one saved bool mask, as in PyTorch's
    dropout, and two passes each way (autograd through the same two products would add a pass)."""

    @staticmethod
    def forward(ctx: FunctionCtx, input: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return input.mul(keep).mul_(scale)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments; it holds no tensors, so checkpoints are unchanged) with the cheaper
    :func:`keep_mask` when training eagerly on CPU. Elsewhere (inference, CUDA, whose generator runs in
    parallel, and compiled or traced graphs) it is ``nn.Dropout`` itself. Kept elements are scaled by
    ``1 / (1 - p)``, as there.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or input.device.type != "cpu" or not running_eagerly():
            return super().forward(input)
        return _KeepAndScale.apply(input, keep_mask(input.shape, self.p, input.device), 1.0 / (1.0 - self.p))
