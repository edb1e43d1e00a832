"""ResNet backbones (via timm) that return multi-scale feature maps with their padding masks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detr_ssl.errors import CheckpointError
from detr_ssl.models.checkpoint_io import load_state_dict_file, trunk_keys

BackboneNorm = Literal["frozen_bn", "group_norm"]


def frozen_bn(channels: int, **_: object) -> nn.Module:
    """FrozenBatchNorm2d as a timm ``norm_layer`` (timm's device/dtype keywords, which it does not take, are
    dropped)."""
    return FrozenBatchNorm2d(channels)


def _norm_layer(norm: BackboneNorm) -> Callable[[int], nn.Module]:
    """Frozen BN keeps pretrained statistics (the paper's choice); GroupNorm trains from scratch
    without depending on the batch, so small and multi-process batches behave alike."""
    # timm passes device/dtype keywords that these constructors do not take; parameters start on CPU.
    if norm == "frozen_bn":
        return frozen_bn
    if norm == "group_norm":
        return lambda channels, **_: nn.GroupNorm(min(32, channels // 4), channels)
    raise ValueError(f"unknown backbone norm {norm!r}; choose 'frozen_bn' or 'group_norm'")


def frozen_prefixes(frozen_stages: int) -> tuple[str, ...]:
    """Parameter-name prefixes of a ResNet's stem and first ``frozen_stages`` stages (none for 0: no name
    starts with an empty tuple of prefixes)."""
    if frozen_stages == 0:
        return ()
    return ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, frozen_stages + 1))


class Backbone(nn.Module):
    """A timm ResNet truncated to its last ``num_levels`` stages (C5, C4, C3 ... strides 32, 16, 8).

    Args:
        name: any timm ResNet name (``resnet18``, ``resnet50``, ...).
        norm: normalisation layer, see :func:`_norm_layer`.
        num_levels: how many stages to return, the deepest last.
        trainable: False freezes every parameter (UP-DETR / DetReg pretraining keep it frozen).
        frozen_stages: with ``trainable``, the stem and this many first stages stay frozen (the paper: 1).
        weights: optional local state dict (timm/torchvision layout, ``module.`` prefixes allowed).
    """

    def __init__(
        self,
        name: str = "resnet50",
        norm: BackboneNorm = "frozen_bn",
        num_levels: int = 3,
        trainable: bool = True,
        weights: Path | None = None,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= num_levels <= 4:
            raise ValueError(f"num_levels must be in 1..4, got {num_levels}")
        out_indices = tuple(range(5 - num_levels, 5))
        self.body = timm.create_model(
            name,
            pretrained=False,
            features_only=True,
            out_indices=out_indices,
            norm_layer=_norm_layer(norm),
            zero_init_last=False,
        )
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        if weights is not None:
            load_backbone_weights(self, weights)
        if not trainable:
            self.requires_grad_(False)
        else:
            frozen = frozen_prefixes(frozen_stages)
            for name, param in self.body.named_parameters():
                if name.startswith(frozen):
                    param.requires_grad_(False)

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """images ``(B, 3, H, W)``, mask ``(B, H, W)`` -> per level (features ``(B, C_l, H_l, W_l)``, mask)."""
        features = self.body(images)
        out = []
        for feat in features:
            level_mask = F.interpolate(mask[None].float(), size=feat.shape[-2:])[0].to(torch.bool)
            out.append((feat, level_mask))
        return out


def load_backbone_weights(backbone: Backbone, path: Path) -> None:
    """Loads a ResNet state dict saved by timm or torchvision, an (official or our) SwAV-layout file or a
    pretrained detector's backbone (see :func:`trunk_keys`); classifier and other heads are ignored.

    Raises CheckpointError naming the file when it has none of the backbone's keys.
    """
    state = trunk_keys(load_state_dict_file(path))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.body.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"{path}: no tensor matches the {type(backbone.body).__name__} backbone's keys")
    missing = sorted(set(own) - set(usable))
    # Stages beyond the returned levels are dropped by timm and are not missing; FrozenBN buffers are.
    if missing:
        raise CheckpointError(f"{path}: backbone weights lack {len(missing)} keys, e.g. {missing[:3]}")
    backbone.body.load_state_dict(usable, strict=False)
