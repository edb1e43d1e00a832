"""Frozen encoders that turn image crops into pretext targets.

DetReg regresses the embedding a frozen SwAV ResNet-50 gives each proposal crop; UP-DETR adds the
embedding the detector's own (frozen) backbone gives each random patch to the decoder queries and
reconstructs it. Both are "crop -> ResNet stage -> global average pool", built here by
:func:`build_teacher`; the crops themselves come from :func:`detr_ssl.models.crops.crop_and_resize`.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Literal

import timm
import torch
from torch import Tensor, nn

from detr_ssl.errors import CheckpointError
from detr_ssl.models.backbone import Backbone, frozen_bn, inference_ready_
from detr_ssl.models.checkpoint_io import load_state_dict_file, trunk_keys

__all__ = ["FrozenEncoder", "Stage", "build_teacher", "load_swav_state_dict", "resnet_arch_of", "resnet_trunk"]

Stage = Literal["layer1", "layer2", "layer3", "layer4"]

#: timm ``features_only`` index of each ResNet stage (index 0 is the stride-2 stem).
_STAGE_INDEX: dict[str, int] = {"layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}

#: Key prefixes of SwAV's training-only heads and of the ImageNet classifier: never part of a trunk.
_HEAD_PREFIXES = ("projection_head.", "prototypes.", "fc.")


class FrozenEncoder(nn.Module):
    """Crops ``(N, 3, S, S)`` -> embeddings ``(N, dim)``: one ResNet stage, global average pooled.

    Frozen for good: no parameter requires a gradient, ``train()`` keeps it in eval mode (normalisation
    uses the checkpoint's statistics) and the forward runs without autograd, so the targets it produces
    are constants of the pretext loss. Being frozen, its FrozenBatchNorm2d layers are folded into their
    convolutions at construction and it runs in the channels-last memory format, which the convolutions
    are faster in (see :func:`~detr_ssl.models.backbone.inference_ready_`): the same function, fewer passes.

    Args:
        trunk: a timm ``features_only`` ResNet (a ``FeatureListNet``) returning a list of maps; taken over
            and modified in place (pass a copy to keep the original).
        stage: which of its returned stages to pool (``"layer4"``: 2048-d for ResNet-50, the DetReg paper
            and UP-DETR; ``"layer2"``: 512-d, DetReg's released configuration).
    """

    def __init__(self, trunk: nn.Module, stage: Stage = "layer4") -> None:
        super().__init__()
        names = list(trunk.feature_info.module_name())
        if stage not in names:
            raise ValueError(f"the trunk returns stages {names}, not the requested {stage!r}")
        self.trunk = trunk
        self.stage = stage
        self._level = names.index(stage)
        self.dim: int = int(trunk.feature_info.channels()[self._level])
        stages = list(trunk.keys())
        for later in stages[stages.index(stage) + 1:]:
            del trunk[later]  # stages after the pooled one (the detector's own backbone has them): never read
        inference_ready_(trunk)
        self.train(False)
        for param in self.parameters():
            param.grad = None

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Stays in eval mode whatever ``mode`` says (the detector's ``model.train()`` reaches here too)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, crops: Tensor) -> Tensor:
        """``(N, 3, S, S)`` normalised crops -> ``(N, dim)`` embeddings (``N`` may be 0)."""
        features = self.trunk(crops.contiguous(memory_format=torch.channels_last))[self._level]
        return features.mean(dim=(-2, -1))


def resnet_trunk(arch: str = "resnet50", stage: Stage = "layer4") -> nn.Module:
    """A randomly initialised timm ResNet up to ``stage`` (later stages are not built), frozen BN.

    Its parameter names are torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...).
    """
    if stage not in _STAGE_INDEX:
        raise ValueError(f"unknown ResNet stage {stage!r}; choose one of {sorted(_STAGE_INDEX)}")
    return timm.create_model(arch, pretrained=False, features_only=True, out_indices=(_STAGE_INDEX[stage],),
                             norm_layer=frozen_bn)


def _trunk_shapes(arch: str) -> dict[str, torch.Size]:
    """Name -> shape of every tensor of ``arch``'s full trunk (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        trunk = resnet_trunk(arch, "layer4")
    return {name: tensor.shape for name, tensor in trunk.state_dict().items()}


#: (block type, blocks per stage, layer1's first conv width) -> timm/torchvision ResNet name.
_RESNET_SHAPES: dict[tuple[str, tuple[int, ...], int], str] = {
    ("basic", (2, 2, 2, 2), 64): "resnet18",
    ("basic", (3, 4, 6, 3), 64): "resnet34",
    ("bottleneck", (3, 4, 6, 3), 64): "resnet50",
    ("bottleneck", (3, 4, 23, 3), 64): "resnet101",
    ("bottleneck", (3, 8, 36, 3), 64): "resnet152",
    ("bottleneck", (3, 4, 6, 3), 128): "wide_resnet50_2",
    ("bottleneck", (3, 4, 23, 3), 128): "wide_resnet101_2",
}


def resnet_arch_of(state: dict[str, Tensor], path: Path | str = "checkpoint") -> str:
    """The ResNet a trunk state dict (torchvision names, see :func:`trunk_keys`) is the weights of.

    Read from the tensors themselves: the block type (a ``conv3`` means bottleneck blocks), the number
    of blocks in each stage and the width of layer1's first convolution.

    Raises:
        CheckpointError naming ``path`` when the tensors are not one of the ResNets in ``_RESNET_SHAPES``.
    """
    blocks = []
    for stage in range(1, 5):
        indices = {int(key.split(".")[1]) for key in state if key.startswith(f"layer{stage}.")
                   and key.split(".")[1].isdigit()}
        blocks.append(max(indices) + 1 if indices else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    first = state.get("layer1.0.conv1.weight")
    width = int(first.shape[0]) if first is not None else 0
    arch = _RESNET_SHAPES.get((kind, tuple(blocks), width))
    if arch is None:
        raise CheckpointError(f"{path}: not a ResNet trunk we know: {kind} blocks {tuple(blocks)} per stage, "
                              f"layer1 width {width} (known: {', '.join(sorted(_RESNET_SHAPES.values()))})")
    return arch


def load_swav_state_dict(path: Path, arch: str | None = None) -> dict[str, Tensor]:
    """Reads ResNet trunk weights: an official SwAV checkpoint or any torchvision/timm ResNet state dict.

    Accepted layouts: a plain state dict or one under ``state_dict`` / ``model``; keys with or without the
    ``module.`` prefix DDP adds (SwAV's ``swav_800ep_pretrain.pth.tar`` and torch.hub ``swav`` have it),
    or a pretrained detector's ``backbone.body.`` (see :func:`trunk_keys`).
    SwAV's ``projection_head.*`` / ``prototypes.*``, the classifier ``fc.*`` and BN ``num_batches_tracked``
    counters are dropped; other keys outside the trunk's modules are ignored.

    ``arch`` None reads the architecture from the tensors (:func:`resnet_arch_of`).

    Returns:
        name -> tensor with exactly the keys of ``arch``'s trunk (torchvision/timm names).

    Raises:
        CheckpointError naming the file when it is unreadable, holds Python objects, or its tensors do not
        form an ``arch`` trunk (missing keys, keys of a deeper variant, wrong shapes: a count and examples).
    """
    state = trunk_keys(load_state_dict_file(path))
    state = {key: value for key, value in state.items()
             if not key.startswith(_HEAD_PREFIXES) and not key.endswith("num_batches_tracked")}
    arch = arch or resnet_arch_of(state, path)
    expected = _trunk_shapes(arch)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{path}: not a {arch} checkpoint: {len(missing)} of its {len(expected)} trunk "
                              f"tensors are missing, e.g. {missing[:3]} (file keys look like {sorted(state)[:3]})")
    # Stray keys inside the trunk's own modules mean a deeper variant (resnet34 read as resnet18): refuse.
    roots = {key.split(".")[0] for key in expected}
    unexpected = sorted(key for key in state if key.split(".")[0] in roots and key not in expected)
    if unexpected:
        raise CheckpointError(f"{path}: not a {arch} checkpoint: {len(unexpected)} trunk tensors {arch} does "
                              f"not have, e.g. {unexpected[:3]}")
    wrong = [f"{key} {tuple(state[key].shape)} != {tuple(shape)}" for key, shape in expected.items()
             if state[key].shape != shape]
    if wrong:
        raise CheckpointError(f"{path}: not a {arch} checkpoint: {len(wrong)} tensors have the wrong shape, "
                              f"e.g. {wrong[:3]}")
    return {key: state[key] for key in expected}


@functools.cache
def _warn_backbone_teacher() -> None:
    """Warns once per process (cached): a run builds its teacher once, but tests and notebooks many times."""
    warnings.warn("no teacher checkpoint given: the detector's own backbone (a frozen copy) is the teacher",
                  UserWarning, stacklevel=3)


def build_teacher(
    checkpoint: Path | None,
    arch: str | None = None,
    stage: Stage = "layer4",
    fallback: Backbone | None = None,
) -> FrozenEncoder:
    """The frozen encoder a pretext task computes its targets with.

    Args:
        checkpoint: SwAV / torchvision / timm ResNet weights (see :func:`load_swav_state_dict`); every trunk
            tensor up to ``stage`` must be in it, extra keys are ignored.
        arch: timm ResNet name of the checkpoint; None reads it from the checkpoint's tensors (ignored with
            ``checkpoint=None``).
        stage: ResNet stage to global-pool.
        fallback: the detector's backbone, used when ``checkpoint`` is None (UP-DETR's choice; for DetReg a
            stand-in when no SwAV file is at hand, with a warning). ``stage`` must be one of its levels.

    The fallback is deep-copied and the copy frozen, rather than shared: the detector may train its
    backbone (or have it swapped by ``load_state_dict``), and targets must not drift with it or leak
    gradients into it. The copy is a snapshot, so build the teacher after the backbone has its weights;
    the price is one extra copy of the backbone in memory.
    """
    if checkpoint is None:
        if fallback is None:
            raise ValueError("build_teacher needs a checkpoint or a fallback backbone")
        _warn_backbone_teacher()
        return FrozenEncoder(copy.deepcopy(fallback.body), stage)
    state = load_swav_state_dict(checkpoint, arch)
    trunk = resnet_trunk(arch or resnet_arch_of(state, checkpoint), stage)
    trunk.load_state_dict({key: state[key] for key in trunk.state_dict()}, strict=True)
    return FrozenEncoder(trunk, stage)
