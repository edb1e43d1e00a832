"""The one public entry point: checks shapes, picks a backend, handles dtypes.

Backends: ``"pytorch"`` (`pytorch_backend`, any device, the default) and ``"mmcv"`` (mmcv's CUDA
kernel). ``"auto"`` takes mmcv only when its op imports *and* the tensors are on CUDA. An explicitly
requested backend that cannot run raises `BackendUnavailableError` when called, never at import.
Inside `export_mode` every call runs the traceable `export_formulation` instead, whatever the backend.
Under ``torch.compile`` the pytorch backend runs as the registered operator of `registered_op`, so
Dynamo traces whole models without a graph break; mmcv's kernel (an extension's autograd Function, which
Dynamo cannot trace) breaks the graph there and runs eagerly.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal, get_args

import torch
from torch import Tensor

from detr_ssl.errors import BackendUnavailableError
from detr_ssl.models.config import Backend
from detr_ssl.models.msda.export_formulation import ms_deform_attn_export
from detr_ssl.models.msda.mmcv_backend import mmcv_unavailable_reason, ms_deform_attn_mmcv
from detr_ssl.models.msda.precision import autocast_disabled
from detr_ssl.models.msda.pytorch_backend import ms_deform_attn_pytorch
from detr_ssl.models.msda.registered_op import ms_deform_attn_op

BACKENDS: tuple[str, ...] = get_args(Backend)

# A module global, not a ContextVar: Dynamo reads a global as a constant (and guards on it), while a
# ContextVar lookup would break the graph. Exporting is single-threaded, so nothing else needs it.
_exporting = False


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """While active, `multi_scale_deformable_attention` computes with `ms_deform_attn_export` (gathers and
    tensor arithmetic on the level layout) so that ``torch.export`` / ``torch.onnx.export`` can trace a model
    for any input size. Slower than the backends and heavier on memory: for exporting only."""
    global _exporting
    before, _exporting = _exporting, True
    try:
        yield
    finally:
        _exporting = before


def check_backend_name(backend: str) -> None:
    """ValueError unless ``backend`` is one of `BACKENDS` (cheap; availability is checked at use)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown MSDA backend {backend!r}; choose one of {list(BACKENDS)}")


def resolve_backend(backend: str, device: torch.device) -> Literal["pytorch", "mmcv"]:
    """The backend that will run for ``backend`` on ``device``.

    Raises:
        ValueError: unknown name.
        BackendUnavailableError: ``"mmcv"`` requested but its op does not import or the device is not CUDA.
    """
    check_backend_name(backend)
    if backend == "pytorch" or (backend == "auto" and device.type != "cuda"):
        return "pytorch"  # (without importing mmcv just to decide)
    reason = mmcv_unavailable_reason()
    if backend == "auto":
        return "pytorch" if reason else "mmcv"
    if reason is not None:
        raise BackendUnavailableError(
            f"MSDA backend 'mmcv' requested but mmcv.ops.multi_scale_deform_attn does not import ({reason}); "
            "install the [mmcv] extra on a CUDA machine, or use backend='pytorch' / 'auto'"
        )
    if device.type != "cuda":
        raise BackendUnavailableError(
            f"MSDA backend 'mmcv' has only a CUDA kernel but the tensors are on {device}; "
            "use backend='pytorch' or 'auto'"
        )
    return "mmcv"


def _check_shapes(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor) -> None:
    def fail(problem: str) -> None:
        raise ValueError(
            f"multi_scale_deformable_attention: {problem} (value {tuple(value.shape)}, spatial_shapes "
            f"{tuple(spatial_shapes.shape)}, level_start_index {tuple(level_start_index.shape)}, "
            f"sampling_locations {tuple(sampling_locations.shape)}, attention_weights "
            f"{tuple(attention_weights.shape)})"
        )

    if value.dim() != 4:
        fail("value must be (N, S, M, D)")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        fail("sampling_locations must be (N, Lq, M, L, P, 2)")
    n, _, heads, _ = value.shape
    _, _, loc_heads, levels, _, _ = sampling_locations.shape
    if sampling_locations.shape[0] != n or loc_heads != heads:
        fail("sampling_locations must match value's batch and heads")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        fail("attention_weights must be sampling_locations.shape[:-1]")
    if spatial_shapes.shape != (levels, 2) or level_start_index.shape != (levels,):
        fail("spatial_shapes must be (L, 2) and level_start_index (L,)")
    if spatial_shapes.is_floating_point() or level_start_index.is_floating_point():
        fail("spatial_shapes and level_start_index must be integer tensors")


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    backend: Backend = "auto",
) -> Tensor:
    """Multi-scale deformable attention (Zhu et al., 2021): bilinear samples of every level, weighted and summed.

    Sampling is bilinear with zero padding and ``align_corners=False`` (pixel ``i``'s centre is at
    ``(i + 0.5) / W``); points outside ``[0, 1]`` read zeros. Float16/bfloat16 inputs are computed in
    float32 (both backends); the result has ``value``'s dtype.

    Args:
        value: ``(N, S, M, D)`` features of all levels, each flattened row-major, concatenated over ``S``.
        spatial_shapes: ``(L, 2)`` integer ``(H, W)`` per level.
        level_start_index: ``(L,)`` first row of each level in ``S``.
        sampling_locations: ``(N, Lq, M, L, P, 2)`` normalised ``(x, y)`` per query, head, level, point.
        attention_weights: ``(N, Lq, M, L, P)``, already softmaxed over ``L * P`` by the caller.
        backend: ``"auto"``, ``"pytorch"`` or ``"mmcv"`` (see module docstring).

    Returns:
        ``(N, Lq, M * D)``, the heads' outputs concatenated.

    Example:
        >>> value = torch.randn(2, 20, 4, 8)                       # levels 4x4 and 2x2, 4 heads of 8
        >>> shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])
        >>> locations = torch.rand(2, 5, 4, 2, 3, 2)               # 5 queries, 3 points
        >>> weights = torch.rand(2, 5, 4, 6).softmax(-1).view(2, 5, 4, 2, 3)
        >>> multi_scale_deformable_attention(value, shapes, starts, locations, weights).shape
        torch.Size([2, 5, 32])
    """
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    # Mixed precision: under autocast the three float inputs arrive in different dtypes (the projections
    # give bfloat16/float16 values, the float32 reference points make float32 locations, the weights come
    # from a softmax). The op computes in one dtype, float32 for any half-precision input, with autocast
    # off inside so that no op of a kernel is silently lowered: the kernels sample at pixel coordinates
    # (normalised location x map width, over 128 on the largest maps), where bfloat16's 8 significant bits
    # leave no fraction of a pixel, the bilinear weights that carry the location gradient; and the sums of
    # 4 * L * P taps need float32 accumulation. The result is cast back to ``value``'s dtype.
    dtype = functools.reduce(torch.promote_types, (value.dtype, sampling_locations.dtype, attention_weights.dtype))
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    inputs = (value.to(dtype), spatial_shapes, level_start_index, sampling_locations.to(dtype),
              attention_weights.to(dtype))
    with autocast_disabled(value.device):
        if _exporting:
            out = ms_deform_attn_export(*inputs)
        elif resolve_backend(backend, value.device) == "mmcv" and value.numel() and sampling_locations.numel():
            out = ms_deform_attn_mmcv(*inputs)  # (empty work goes to the pytorch path, which handles it anywhere)
        elif torch.compiler.is_compiling():
            out = ms_deform_attn_op(*inputs)
        else:
            out = ms_deform_attn_pytorch(*inputs)
    return out.to(value.dtype)
