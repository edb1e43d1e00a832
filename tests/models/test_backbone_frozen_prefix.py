"""The backbone's fast path for its frozen leading modules (folded BN, channels-last, no autograd) computes
the plain timm body's function: same maps, same gradients, same checkpoint, and it follows weight changes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detr_ssl.models.backbone import Backbone, fold_frozen_batchnorm_


def _assert_close(ours: torch.Tensor, reference: torch.Tensor, what: str = "") -> None:
    """Equal up to float rounding, measured against the tensor's scale (folding and channels-last only round
    differently; a gradient summed over many pixels has entries near zero that a plain rtol would flag)."""
    assert ours.shape == reference.shape, what
    error = float((ours - reference).detach().abs().max())
    assert error <= 1e-5 * float(reference.detach().abs().max()), f"{what}: max difference {error}"


def _randomise_statistics_(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial frozen BN statistics and affine (a fresh model's are the identity, which folds to itself)."""
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, FrozenBatchNorm2d):
            channels = bn.weight.shape
            bn.weight.copy_(1 + 0.3 * torch.randn(channels, generator=generator))
            bn.bias.copy_(0.2 * torch.randn(channels, generator=generator))
            bn.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
            bn.running_var.copy_(0.5 + torch.rand(channels, generator=generator))


def _backbone(frozen_stages: int = 1, trainable: bool = True, norm: str = "frozen_bn") -> Backbone:
    torch.manual_seed(0)
    backbone = Backbone("resnet10t", norm, num_levels=3, trainable=trainable, frozen_stages=frozen_stages)
    _randomise_statistics_(backbone)
    return backbone


def _images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(seed))


def _assert_maps_close(fast: list[torch.Tensor], plain: list[torch.Tensor]) -> None:
    assert len(fast) == len(plain)
    for ours, reference in zip(fast, plain):
        assert ours.is_contiguous()
        _assert_close(ours, reference)


def test_folding_a_frozen_bn_into_its_convolution_keeps_the_function() -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8), nn.ReLU())
    _randomise_statistics_(reference)
    folded = copy.deepcopy(reference)
    fold_frozen_batchnorm_(folded)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    x = torch.randn(2, 3, 10, 12)
    _assert_close(folded(x), reference(x))


@pytest.mark.parametrize(("frozen_stages", "trainable", "norm"),
                         [(1, True, "frozen_bn"), (2, True, "frozen_bn"), (0, False, "frozen_bn"),
                          (1, True, "group_norm"), (0, True, "frozen_bn")])
def test_feature_maps_equal_the_plain_body(frozen_stages: int, trainable: bool, norm: str) -> None:
    backbone = _backbone(frozen_stages, trainable, norm)
    images = _images()
    _assert_maps_close(backbone.feature_maps(images), backbone.body(images))


def test_gradients_of_the_trained_stages_equal_the_plain_body() -> None:
    backbone = _backbone(frozen_stages=1)
    images = _images()
    weights = [torch.randn_like(m) for m in backbone.body(images)]

    def gradients(maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        backbone.zero_grad(set_to_none=True)
        sum((m * w).sum() for m, w in zip(maps, weights)).backward()
        return {name: p.grad.clone() for name, p in backbone.named_parameters() if p.requires_grad}

    plain = gradients(backbone.body(images))
    fast = gradients(backbone.feature_maps(images))
    assert plain.keys() == fast.keys() and plain
    assert all(not name.startswith(("body.conv1", "body.bn1", "body.layer1.")) for name in fast)
    for name in plain:
        _assert_close(fast[name], plain[name], name)


def test_checkpoint_keys_and_values_are_untouched() -> None:
    backbone = _backbone()
    before = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    backbone.feature_maps(_images())
    after = backbone.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[name], before[name]) and after[name].is_contiguous() for name in before)
    assert len(list(backbone.parameters())) == len(list(backbone.body.parameters()))


def test_loaded_weights_and_in_place_edits_reach_the_fast_path() -> None:
    backbone = _backbone()
    images = _images()
    backbone.feature_maps(images)  # builds the folded copy from the current weights
    other = _backbone()
    _randomise_statistics_(other, seed=5)
    torch.nn.init.normal_(other.body.conv1[0].weight)
    backbone.body.load_state_dict(other.body.state_dict())
    _assert_maps_close(backbone.feature_maps(images), other.body(images))
    with torch.no_grad():
        backbone.body.bn1.running_mean.add_(0.5)  # a frozen buffer edited in place
    _assert_maps_close(backbone.feature_maps(images), backbone.body(images))
    backbone.double()  # new tensors altogether
    _assert_maps_close(backbone.feature_maps(images.double()), backbone.body(images.double()))


def test_images_that_need_a_gradient_get_one() -> None:
    backbone = _backbone()
    images = _images().requires_grad_(True)
    backbone.feature_maps(images)[-1].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_compilers_and_exporters_see_the_plain_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile / torch.export (hence the ONNX export) trace the timm modules, not the cached copy."""
    backbone = _backbone().eval()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    maps = backbone.feature_maps(_images())
    assert backbone._frozen_prefix is None
    assert all(torch.equal(ours, plain) for ours, plain in zip(maps, backbone.body(_images())))
