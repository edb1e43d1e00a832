"""Frozen teachers: official SwAV / timm / own-backbone weights load into the same function, and stay frozen."""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from detr_ssl.errors import CheckpointError
from detr_ssl.models import teachers
from detr_ssl.models.backbone import Backbone
from detr_ssl.models.teachers import FrozenEncoder, build_teacher, load_swav_state_dict, resnet_trunk

pytestmark = pytest.mark.filterwarnings("ignore:no teacher checkpoint given")

#: Side of every test image (and of the images BN statistics are calibrated on).
SIDE = 32


def _calibrate_batchnorm(model: nn.Module) -> nn.Module:
    """Random affine BN parameters and real running statistics (one train-mode pass), then eval mode.

    Stand-in for a trained checkpoint: wrong BN statistics in the loaded teacher change its output. The
    variance floor keeps the random network well conditioned: near-zero variances measured on 4 small
    images would scale activations by up to ``1/sqrt(eps)`` and float32 rounding with them.
    """
    torch.manual_seed(0)
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None  # running stats = the batch's statistics
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_(0.0, 0.1)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, SIDE, SIDE))
    for norm in norms:
        norm.running_var.clamp_(min=0.5)
    return model.eval()


@dataclass(frozen=True)
class SwavFile:
    path: Path
    reference: torchvision.models.ResNet  # the network whose weights the file holds, eval mode


@pytest.fixture(scope="module")
def swav_file(tmp_path_factory: pytest.TempPathFactory) -> SwavFile:
    """A checkpoint in the official SwAV layout: DDP ``module.`` prefixes, plus its projection head and
    prototypes (which the teacher must drop), around torchvision ResNet-50 names."""
    model = _calibrate_batchnorm(torchvision.models.resnet50(weights=None))
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    state["module.projection_head.0.weight"] = torch.randn(2048, 2048)
    state["module.prototypes.weight"] = torch.randn(3000, 128)
    path = tmp_path_factory.mktemp("swav") / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path)
    return SwavFile(path, model)


def _torchvision_pooled(model: torchvision.models.ResNet, images: torch.Tensor, stage: str) -> torch.Tensor:
    """Global-average-pooled output of ``stage`` of a torchvision ResNet."""
    layers = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    trunk = nn.Sequential(*(getattr(model, name) for name in layers[: layers.index(stage) + 1]))
    with torch.no_grad():
        return trunk(images).mean(dim=(-2, -1))


def test_swav_checkpoint_reproduces_torchvision_features(swav_file: SwavFile) -> None:
    """In float64, so that the comparison sees the weight mapping, not float32 rounding (the teacher folds
    BN into its convolutions: the same function, rounded differently)."""
    state = load_swav_state_dict(swav_file.path)
    assert not any(key.startswith(("projection_head", "prototypes", "fc.", "module.")) for key in state)

    trunk = resnet_trunk("resnet50", "layer4").double()
    trunk.load_state_dict(state)
    encoder = FrozenEncoder(trunk, "layer4")
    images = torch.randn(2, 3, SIDE, SIDE, dtype=torch.float64)

    expected = _torchvision_pooled(copy.deepcopy(swav_file.reference).double(), images, "layer4")
    torch.testing.assert_close(encoder(images), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("stage", "dim"), [("layer4", 2048), ("layer2", 512)])
def test_build_teacher_from_swav_file(swav_file: SwavFile, stage: teachers.Stage, dim: int) -> None:
    teacher = build_teacher(swav_file.path, "resnet50", stage)
    images = torch.randn(3, 3, SIDE, SIDE)

    embeddings = teacher(images)

    assert teacher.dim == dim
    assert embeddings.shape == (3, dim)
    expected = _torchvision_pooled(swav_file.reference, images, stage)
    torch.testing.assert_close(embeddings, expected, atol=1e-4, rtol=1e-4)  # float32: see the float64 test
    assert teacher(torch.zeros(0, 3, SIDE, SIDE)).shape == (0, dim)


@pytest.mark.parametrize("layout", ["timm", "timm_under_state_dict", "own_backbone"])
def test_any_timm_resnet_state_dict_loads(tmp_path: Path, layout: str) -> None:
    """timm names (``num_batches_tracked`` and ``fc`` included) and our Backbone's FrozenBN body load alike."""
    if layout == "own_backbone":
        source = Backbone("resnet18", trainable=False).body
        for module in source.modules():
            if hasattr(module, "running_var"):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        state = source.state_dict()
        reference = lambda x: source(x)[-1].mean(dim=(-2, -1))  # noqa: E731
    else:
        model = _calibrate_batchnorm(timm.create_model("resnet18", pretrained=False))
        state = {"state_dict": model.state_dict()} if layout == "timm_under_state_dict" else model.state_dict()
        reference = lambda x: model.forward_features(x).mean(dim=(-2, -1))  # noqa: E731
    path = tmp_path / "weights.pth"
    torch.save(state, path)

    teacher = build_teacher(path, arch="resnet18")

    images = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        expected = reference(images)
    torch.testing.assert_close(teacher(images), expected, atol=1e-4, rtol=1e-4)


@pytest.fixture
def detector_backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone("resnet18", trainable=True)


def _backbone_pooled(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    return backbone(images, mask)[-1][0].mean(dim=(-2, -1))


def test_fallback_teacher_pools_the_backbone_deepest_map(detector_backbone: Backbone) -> None:
    images = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        before = _backbone_pooled(detector_backbone, images)

    teacher = build_teacher(None, fallback=detector_backbone)

    assert teacher.dim == detector_backbone.channels[-1]
    torch.testing.assert_close(teacher(images), before, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # building the teacher (copy, fold) left the detector's backbone untouched
        torch.testing.assert_close(_backbone_pooled(detector_backbone, images), before, atol=0, rtol=0)


def test_a_shallower_fallback_teacher_keeps_only_the_stages_it_pools(detector_backbone: Backbone) -> None:
    images = torch.randn(2, 3, SIDE, SIDE)
    mask = torch.zeros(2, SIDE, SIDE, dtype=torch.bool)
    with torch.no_grad():
        layer2 = detector_backbone(images, mask)[0][0].mean(dim=(-2, -1))  # the backbone's first map is C3

    teacher = build_teacher(None, stage="layer2", fallback=detector_backbone)

    assert "layer3" not in teacher.trunk and "layer4" not in teacher.trunk  # never read, so never computed
    assert "layer4" in detector_backbone.body
    assert teacher.dim == layer2.shape[1]
    torch.testing.assert_close(teacher(images), layer2, atol=1e-4, rtol=1e-4)


def test_teacher_is_frozen_and_independent_of_the_detector_backbone(detector_backbone: Backbone) -> None:
    teacher = build_teacher(None, fallback=detector_backbone)
    images = torch.randn(2, 3, SIDE, SIDE)
    targets = teacher(images)

    assert not any(p.requires_grad for p in teacher.parameters())
    assert not targets.requires_grad
    teacher.train()
    assert not any(m.training for m in teacher.modules())

    optimizer = torch.optim.SGD(detector_backbone.parameters(), lr=0.5)
    _backbone_pooled(detector_backbone, images).pow(2).sum().backward()
    optimizer.step()

    assert all(p.grad is None for p in teacher.parameters())
    torch.testing.assert_close(teacher(images), targets, atol=0, rtol=0)
    with torch.no_grad():
        moved = _backbone_pooled(detector_backbone, images)
    assert not torch.allclose(moved, targets, atol=1e-3)  # the step did change the detector's backbone


def test_fallback_warns_once(detector_backbone: Backbone) -> None:
    teachers._warn_backbone_teacher.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_teacher(None, fallback=detector_backbone)
        build_teacher(None, fallback=detector_backbone)
    messages = [str(w.message) for w in caught if "teacher" in str(w.message)]
    assert len(messages) == 1
    assert "own backbone" in messages[0]


def test_fallback_needs_the_requested_stage() -> None:
    with pytest.raises(ValueError, match="layer2"):
        build_teacher(None, stage="layer2", fallback=Backbone("resnet18", num_levels=1))


def test_teacher_needs_a_checkpoint_or_a_fallback() -> None:
    with pytest.raises(ValueError, match="checkpoint or a fallback"):
        build_teacher(None)


@dataclass
class _Payload:
    """Any class instance: unpickling it would run arbitrary code, so weights_only loading refuses it."""

    value: int = 1


def _resnet18_state() -> dict[str, torch.Tensor]:
    return timm.create_model("resnet18", pretrained=False).state_dict()


def _write_bad_file(path: Path, kind: str) -> None:
    if kind == "pickle_payload":
        torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload()}, path)
    elif kind == "random_junk":
        path.write_bytes(os.urandom(4096))
    elif kind == "wrong_keys":
        torch.save({"encoder.weight": torch.zeros(3), "queue": torch.zeros(4)}, path)
    elif kind == "deeper_variant":
        torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    elif kind == "wrong_shape":
        torch.save({**_resnet18_state(), "layer2.0.conv1.weight": torch.zeros(8, 8, 3, 3)}, path)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("pickle_payload", "refused to load"),
        ("random_junk", None),
        ("wrong_keys", r"of its \d+ trunk tensors are missing"),
        ("deeper_variant", r"\d+ trunk tensors resnet18 does not have"),
        ("wrong_shape", "1 tensors have the wrong shape"),
    ],
)
def test_bad_checkpoint_raises_checkpoint_error_naming_the_file(tmp_path: Path, kind: str, reason: str | None) -> None:
    path = tmp_path / f"{kind}.pth"
    _write_bad_file(path, kind)

    with pytest.raises(CheckpointError, match=reason) as error:
        build_teacher(path, arch="resnet18")
    assert str(path) in str(error.value)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2"])
def test_the_architecture_is_read_from_the_tensors(arch: str) -> None:
    with torch.device("meta"):
        state = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert teachers.resnet_arch_of(state) == arch


def test_a_teacher_file_says_what_it_is(swav_file: SwavFile, tmp_path: Path) -> None:
    assert build_teacher(swav_file.path, stage="layer2").dim == 512  # no arch given: read as resnet50
    small = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}, small)
    assert build_teacher(small, stage="layer2").dim == 128 and build_teacher(small, stage="layer4").dim == 512
    with pytest.raises(CheckpointError, match="not a resnet50 checkpoint"):
        build_teacher(small, "resnet50")  # an explicit arch is still checked
    odd = tmp_path / "odd.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "layer2.0.conv1.weight": torch.zeros(1)}, odd)
    with pytest.raises(CheckpointError, match=r"odd\.pth: not a ResNet trunk we know: basic blocks \(1, 1, 0, 0\)"):
        build_teacher(odd)
