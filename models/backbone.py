"""ResNet backbones (via timm) that return multi-scale feature maps with their padding masks."""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops.misc import FrozenBatchNorm2d

from detr_ssl.errors import CheckpointError
from detr_ssl.models.checkpoint_io import load_state_dict_file, trunk_keys
from detr_ssl.models.eager import running_eagerly

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


def fold_frozen_batchnorm_(module: nn.Module) -> None:
    """Folds each FrozenBatchNorm2d into the convolution feeding it (``bn(conv(x)) == conv'(x)``), in place.

    A frozen BN is a fixed per-channel affine map, so folding it changes nothing but rounding and saves the
    passes over every activation that applying it takes. Conv -> BN pairs are found the way timm ResNets are
    laid out: sibling ``convK`` / ``bnK`` modules and adjacent entries of a Sequential (``downsample``, deep
    stems). A BN not found that way stays as it is, which is still correct.
    """
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        names = list(children)
        if isinstance(parent, nn.Sequential):
            pairs = list(itertools.pairwise(names))
        else:
            pairs = [(name, "bn" + name.removeprefix("conv")) for name in names if name.startswith("conv")]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(parent, bn_name, nn.Identity())


def inference_ready_(module: nn.Module) -> nn.Module:
    """Readies, in place, a module that is only ever run without gradients: frozen BNs folded
    (:func:`fold_frozen_batchnorm_`), eval mode, no parameter requiring a gradient, and channels-last
    weights, the layout oneDNN's CPU convolutions and max pooling run fastest on (outputs differ by
    float32 rounding only). Returns ``module``."""
    fold_frozen_batchnorm_(module)
    module.eval().requires_grad_(False)
    return module.to(memory_format=torch.channels_last)


class FrozenPrefix:
    """An inference copy of a trunk's leading modules that no gradient reaches: BNs folded, channels-last.

    Both choices only change how the same function runs: oneDNN's CPU convolutions and max pooling work
    natively on channels-last tensors (NCHW ones are reordered around every convolution, and NCHW max
    pooling is a slow kernel), and a folded BN costs no pass over the activations. The trainable stages
    after it stay NCHW, whose convolution backward is the faster one on CPU.

    The copy is not a submodule (the checkpoint keeps its keys and values, loading is untouched); it
    remembers the tensors it was made from and their version counters, so :meth:`matches` notices any
    change to them (a load, ``.to()``, an in-place edit) and the owner rebuilds it.
    """

    def __init__(self, named_modules: list[tuple[str, nn.Module]]) -> None:
        self.names = [name for name, _ in named_modules]
        self._sources = _tensors_of(named_modules)
        self._versions = [tensor._version for tensor in self._sources]
        self.modules = inference_ready_(
            nn.Sequential(OrderedDict((name, copy.deepcopy(module)) for name, module in named_modules)))

    def matches(self, named_modules: list[tuple[str, nn.Module]]) -> bool:
        """Whether this copy was made from exactly these modules' current tensors."""
        if [name for name, _ in named_modules] != self.names:
            return False
        tensors = _tensors_of(named_modules)
        return len(tensors) == len(self._sources) and all(
            now is then and now._version == version
            for now, then, version in zip(tensors, self._sources, self._versions))

    @torch.no_grad()
    def __call__(self, images: Tensor, returned: set[str], training: bool) -> tuple[Tensor, list[Tensor]]:
        """The prefix's output (NCHW) and, in order, those of its modules named in ``returned``; ``training``
        is the owner's mode (it matters only to modules such as stochastic depth, which act alike on folded
        weights)."""
        if self.modules.training != training:
            self.modules.train(training)
        x = images.contiguous(memory_format=torch.channels_last)
        outputs = []
        for name, module in self.modules.named_children():
            x = module(x)
            if name in returned:
                outputs.append(x.contiguous())
        return x.contiguous(), outputs


def _tensors_of(named_modules: list[tuple[str, nn.Module]]) -> list[Tensor]:
    return [tensor for _, module in named_modules
            for tensor in (*module.parameters(), *module.buffers())]


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
        # Built on first use by feature_maps; a plain attribute, so neither a submodule nor saved.
        self._frozen_prefix: FrozenPrefix | None = None
        if weights is not None:
            load_backbone_weights(self, weights)
        if not trainable:
            self.requires_grad_(False)
        else:
            frozen = frozen_prefixes(frozen_stages)
            for param_name, param in self.body.named_parameters():
                if param_name.startswith(frozen):
                    param.requires_grad_(False)

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """``self.body(images)``, with the body's leading modules that no gradient reaches (no parameter
        requiring one, input not requiring one) run by a :class:`FrozenPrefix`, built on first use and
        rebuilt when their weights change."""
        modules = list(self.body.items())
        frozen = 0
        while frozen < len(modules) and not any(p.requires_grad for p in modules[frozen][1].parameters()):
            frozen += 1
        if frozen == 0 or images.requires_grad or self.body.grad_checkpointing or not running_eagerly():
            return self.body(images)
        if self._frozen_prefix is None or not self._frozen_prefix.matches(modules[:frozen]):
            self._frozen_prefix = FrozenPrefix(modules[:frozen])
        returned = set(self.body.return_layers)
        x, outputs = self._frozen_prefix(images, returned, self.training)
        for name, module in modules[frozen:]:
            x = module(x)
            if name in returned:
                outputs.append(x)
        return outputs

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """images ``(B, 3, H, W)``, mask ``(B, H, W)`` -> per level (features ``(B, C_l, H_l, W_l)``, mask)."""
        features = self.feature_maps(images)
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
