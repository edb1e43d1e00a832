"""Multi-scale deformable attention: one function, backends ``pytorch`` (default, any device) and ``mmcv`` (CUDA).

- `multi_scale_deformable_attention`: the op; ``backend="auto"`` uses mmcv's kernel on CUDA when it imports.
- `MSDeformAttn`: the Deformable DETR layer built on it.
- `ms_deform_attn_reference`: the plain per-level ``grid_sample`` definition the backends are tested against.
"""

from detr_ssl.models.msda.dispatch import BACKENDS, Backend, multi_scale_deformable_attention, resolve_backend
from detr_ssl.models.msda.module import MSDeformAttn
from detr_ssl.models.msda.reference import ms_deform_attn_reference

__all__ = [
    "BACKENDS",
    "Backend",
    "MSDeformAttn",
    "ms_deform_attn_reference",
    "multi_scale_deformable_attention",
    "resolve_backend",
]
