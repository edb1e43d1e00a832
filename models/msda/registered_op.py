"""The pytorch backend as a registered operator, ``torch.ops.detr_ssl.ms_deform_attn``, for ``torch.compile``.

Dynamo cannot trace the backend itself: it reads the level layout as Python numbers
(``spatial_shapes.tolist()``) and builds index tensors whose sizes follow from those values. Registered
with ``torch.library`` (a fake implementation that gives the output's shape from the input shapes, and a
backward that is a second registered operator) it is one opaque node of the graph, so a whole Deformable
DETR compiles with ``fullgraph=True`` and the layers around the op are fused.

Eager calls do not go through here (`dispatch` picks `ms_deform_attn_pytorch` directly): an operator's
outputs must have shapes known from its inputs' shapes, and the zero-padded value and tap indices the
backward needs have sizes that depend on ``spatial_shapes``' values, so this backward recomputes them
from the inputs instead of saving them, which eager training need not pay.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from detr_ssl.models.msda.pytorch_backend import level_layout, sparse_backward, sparse_forward


@torch.library.custom_op("detr_ssl::ms_deform_attn", mutates_args=())
def ms_deform_attn_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                      sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """`ms_deform_attn_pytorch` as an operator (same contract; its backward is registered below)."""
    levels = level_layout(value, spatial_shapes, level_start_index)
    return sparse_forward(value, sampling_locations, attention_weights, levels)[0]


@ms_deform_attn_op.register_fake
def _(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
      attention_weights: Tensor) -> Tensor:
    n, _, heads, channels = value.shape
    return value.new_empty(n, sampling_locations.shape[1], heads * channels)


@torch.library.custom_op("detr_ssl::ms_deform_attn_backward", mutates_args=())
def ms_deform_attn_backward_op(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                               sampling_locations: Tensor, attention_weights: Tensor,
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. value, sampling_locations and attention_weights, the forward's taps recomputed."""
    levels = level_layout(value, spatial_shapes, level_start_index)
    with torch.no_grad():
        _, padded, taps = sparse_forward(value, sampling_locations, attention_weights, levels)
    grads = sparse_backward(grad_out, padded, attention_weights, taps, levels, value.shape[1], (True, True, True))
    return grads[0], grads[1], grads[2]  # all three requested, so none is None


@ms_deform_attn_backward_op.register_fake
def _(grad_out: Tensor, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
      sampling_locations: Tensor, attention_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    value, spatial_shapes, level_start_index, locations, attention = ctx.saved_tensors
    grad_value, grad_locations, grad_attention = ms_deform_attn_backward_op(
        grad_out.contiguous(), value, spatial_shapes, level_start_index, locations, attention)
    return grad_value, None, None, grad_locations, grad_attention


ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)
