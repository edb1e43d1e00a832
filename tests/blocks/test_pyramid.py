"""The detector pyramid a backbone pretext trains: the same levels, names and numbers as the detector's
``input_proj``, exported so that a fine-tune loads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from runs import finetune_initialised_parts

from detr_ssl.blocks.pyramid import DetectorPyramid, build_pyramid, trunk_stages
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import DeformableDETR
from detr_ssl.tasks.backbone_pretext import build_trunk
from detr_ssl.tasks.densecl import DenseClTask


def test_trunk_stages_are_the_resnet_stages_and_end_in_its_feature_map() -> None:
    trunk = build_trunk("resnet18").eval()
    images = torch.randn(2, 3, 64, 96)
    stages = trunk_stages(trunk, images)
    assert [tuple(s.shape[1:]) for s in stages] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]
    torch.testing.assert_close(stages[-1], trunk.forward_features(images))


@pytest.mark.parametrize("num_levels", [2, 3, 4, 5])
def test_pyramid_computes_the_detectors_levels_with_its_weights(num_levels: int) -> None:
    torch.manual_seed(0)
    config = model_preset("tiny", num_feature_levels=num_levels)
    detector = DeformableDETR(config, num_classes=2).eval()
    pyramid = DetectorPyramid(detector.backbone.channels, config.hidden_dim, num_levels)
    pyramid.input_proj.load_state_dict(detector.input_proj.state_dict())  # same names and shapes
    images, mask = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    expected, _, _ = detector.multiscale_features(images, mask)
    features = [feature for feature, _ in detector.backbone(images, mask)]
    levels = pyramid.eval()([torch.empty(0)] * (4 - len(features)) + features)
    assert len(levels) == num_levels
    for ours, theirs in zip(levels, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
    first_stride = 64 // levels[0].shape[-1]
    assert pyramid.strides == tuple(first_stride * 2**i for i in range(num_levels))


def test_pyramid_levels_halve_from_stride_8() -> None:
    trunk = build_trunk("resnet18")
    pyramid = build_pyramid(trunk, hidden_dim=16, num_levels=4)
    levels = pyramid(trunk_stages(trunk, torch.randn(1, 3, 128, 128)))
    assert [tuple(level.shape[1:]) for level in levels] == [(16, 16, 16), (16, 8, 8), (16, 4, 4), (16, 2, 2)]
    assert pyramid.strides == (8, 16, 32, 64)
    with pytest.raises(ValueError, match="1 to 5 levels"):
        build_pyramid(trunk, hidden_dim=16, num_levels=6)


class _PyramidModel(torch.nn.Module):
    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self.trunk = build_trunk("resnet18")
        self.pyramid = build_pyramid(self.trunk, hidden_dim=64, num_levels=num_levels)


def test_export_writes_the_pyramid_and_a_finetune_initialises_it(tmp_path: Path) -> None:
    task = DenseClTask(DenseClTask.preset_config("demo"))  # any backbone pretext exports the same way
    model = _PyramidModel(num_levels=3)
    pretrained, _ = task.export(model, tmp_path)
    state = torch.load(pretrained, weights_only=True)
    assert state["config"]["num_feature_levels"] == 3 and state["config"]["hidden_dim"] == 64
    proj_keys = {k for k in state["model"] if k.startswith("input_proj.")}
    assert proj_keys == {f"input_proj.{k}" for k in model.pyramid.input_proj.state_dict()}
    parts = finetune_initialised_parts(pretrained)
    assert parts["input_proj"] == len(proj_keys) and parts["backbone"] > 0
    # A trunk-only export initialises no projection.
    plain = torch.nn.Module()
    plain.trunk = model.trunk
    pretrained_plain, _ = task.export(plain, tmp_path / "plain")
    assert "input_proj" not in finetune_initialised_parts(pretrained_plain)
