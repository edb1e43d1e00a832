"""What tests of training runs share: a folder of demo photos to train on, the scalars a run logged, and the
check that a backbone pretext's export loads."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from detr_ssl.engine.checkpoint import load_pretrained, loaded_parts
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import DeformableDETR
from detr_ssl.models.teachers import build_teacher, load_swav_state_dict
from detr_ssl.tasks.backbone_pretext import build_trunk


def copy_photos(demo_photos: Path, folder: Path, count: int) -> Path:
    """``folder`` (created) holding the first ``count`` demo photos."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(demo_photos.iterdir())[:count]:
        (folder / photo.name).write_bytes(photo.read_bytes())
    return folder


def scalar_histories(run_dir: Path) -> dict[str, list[float]]:
    """Every tag of ``run_dir/scalars.csv`` -> its values in logging order."""
    histories: dict[str, list[float]] = {}
    with (Path(run_dir) / "scalars.csv").open() as handle:
        for row in csv.DictReader(handle):
            histories.setdefault(row["tag"], []).append(float(row["value"]))
    return histories


def load_exported_trunk(pretrained: Path, layout: Path, arch: str = "resnet18") -> nn.Module:
    """Checks a backbone pretext's export: ``pretrained.pth`` and the SwAV-layout file hold the same trunk
    tensors, which load into a fresh ``arch`` ResNet (only ``num_batches_tracked`` missing), and the layout
    file as a teacher gives that ResNet's outputs. Returns the loaded trunk (eval mode)."""
    trunk_state = load_swav_state_dict(layout, arch)
    pretrained_keys = torch.load(pretrained, weights_only=True)["model"].keys()
    body_keys = {k.removeprefix("backbone.body.") for k in pretrained_keys if k.startswith("backbone.body.")}
    assert trunk_state.keys() == body_keys
    assert all(k.startswith(("backbone.body.", "input_proj.")) for k in pretrained_keys)
    trunk = build_trunk(arch)
    missing, unexpected = trunk.load_state_dict(trunk_state, strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
    crops = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(build_teacher(layout, arch)(crops), trunk.eval()(crops), rtol=1e-4, atol=1e-4)
    return trunk


def finetune_initialised_parts(pretrained: Path, model_size: str = "tiny", **model_overrides: object) -> dict[str, int]:
    """The detector parts a fine-tune initialises from ``pretrained`` (what its report lists), for a
    detector of ``model_size`` with the frozen BatchNorm a backbone pretext's export asks for."""
    detector = DeformableDETR(model_preset(model_size, backbone_norm="frozen_bn", **model_overrides), num_classes=3)
    missing, _ = load_pretrained(detector, pretrained)
    return loaded_parts(detector, missing)
