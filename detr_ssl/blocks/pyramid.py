"""The feature pyramid a backbone pretext can train along with the trunk: the detector's own levels.

Deformable DETR reads C3-C5 of the ResNet through 1x1 projections (``input_proj``) and adds stride-2
levels above C5. Methods that pretrained an FPN (CCOP, MCL) train these projections instead here, built by
the same function as the detector's (:func:`detr_ssl.models.deformable_detr.input_projections`), so the
export's ``input_proj.*`` tensors load into the fine-tuned detector by name and shape.
"""

from __future__ import annotations

from torch import Tensor, nn

from detr_ssl.models.deformable_detr import input_projections, project_levels

__all__ = ["PYRAMID_STRIDES", "DetectorPyramid", "build_pyramid", "pyramid_strides", "trunk_stages"]

PYRAMID_STRIDES = (8, 16, 32, 64, 128)
"""Stride of each pyramid level, shallowest first: C3, C4, C5, then the extra levels."""


def trunk_stages(trunk: nn.Module, images: Tensor) -> list[Tensor]:
    """``[C2, C3, C4, C5]``: the outputs of the four residual stages of a timm ResNet (strides 4 to 32)."""
    x = trunk.maxpool(trunk.act1(trunk.bn1(trunk.conv1(images))))
    stages = []
    for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        x = stage(x)
        stages.append(x)
    return stages


def pyramid_strides(num_levels: int) -> tuple[int, ...]:
    """Stride of each of the ``num_levels`` levels of the detector's pyramid, shallowest first: the deepest
    ``min(3, num_levels)`` of C3-C5, then the extra levels (3 levels: 8, 16, 32; 4: 8 ... 64; 2: 16, 32)."""
    if not 1 <= num_levels <= len(PYRAMID_STRIDES):
        raise ValueError(f"a pyramid has 1 to {len(PYRAMID_STRIDES)} levels, got {num_levels}")
    first = 3 - min(3, num_levels)
    return PYRAMID_STRIDES[first:first + num_levels]


class DetectorPyramid(nn.Module):
    """A trunk's C3-C5 projected to ``hidden_dim`` channels, plus extra stride-2 levels, ``num_levels`` in
    all (at most 3 backbone levels, as the detector reads): the detector's ``input_proj``, standalone.

    Args:
        trunk_channels: channels of the trunk's C3, C4 and C5 (``trunk.feature_info``).
        hidden_dim: the detector's width (``--model.hidden-dim``).
        num_levels: the detector's ``--model.num-feature-levels``.
    """

    def __init__(self, trunk_channels: list[int], hidden_dim: int, num_levels: int) -> None:
        super().__init__()
        pyramid_strides(num_levels)  # checks the level count
        self.backbone_levels = min(3, num_levels)
        self.input_proj = input_projections(list(trunk_channels[-self.backbone_levels:]), hidden_dim, num_levels)

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each level, shallowest first."""
        return pyramid_strides(len(self.input_proj))

    def forward(self, stages: list[Tensor]) -> list[Tensor]:
        """``[C2, C3, C4, C5]`` (:func:`trunk_stages`) -> ``(B, hidden_dim, H_l, W_l)`` per level, shallowest first."""
        return project_levels(self.input_proj, stages[-self.backbone_levels:])


def build_pyramid(trunk: nn.Module, hidden_dim: int, num_levels: int) -> DetectorPyramid:
    """The :class:`DetectorPyramid` of a timm ResNet ``trunk`` (channels read from its feature info)."""
    channels = [info["num_chs"] for info in trunk.feature_info][-3:]
    return DetectorPyramid(channels, hidden_dim, num_levels)
