"""Rebuilding a detector from the checkpoints the library writes: a fine-tune's and a detector pretext's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detr_ssl.config import to_plain
from detr_ssl.detector import load_detector, model_config_from_plain
from detr_ssl.errors import CheckpointError
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import DeformableDETR


def _tiny(num_classes: int) -> DeformableDETR:
    torch.manual_seed(0)
    return DeformableDETR(model_preset("tiny"), num_classes).eval()


def test_model_config_round_trips_through_its_plain_form() -> None:
    config = model_preset("tiny", backbone_weights=Path("weights/resnet.pth"))
    assert model_config_from_plain(to_plain(config)) == config


def test_a_pretext_export_loads_as_a_class_agnostic_detector(tmp_path: Path) -> None:
    model = _tiny(num_classes=1)
    plain = to_plain(model.config) | {"backbone_weights": "/gone/swav_layout.pth"}  # the run's start, now absent
    torch.save({"model": model.state_dict(), "task": "detreg", "config": plain}, tmp_path / "pretrained.pth")
    loaded = load_detector(tmp_path / "pretrained.pth")
    assert loaded.task == "detreg" and loaded.num_classes == 1 and loaded.category_ids is None
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images, mask).boxes, model(images, mask).boxes)


def test_a_finetune_checkpoint_loads_with_its_categories(tmp_path: Path) -> None:
    model = _tiny(num_classes=3)
    config = {"architecture": "deformable_detr", "model": to_plain(model.config)}
    torch.save({"model": model.state_dict(), "config": config, "num_classes": 3, "category_ids": [4, 7, 9]},
               tmp_path / "checkpoint.pth")
    loaded = load_detector(tmp_path / "checkpoint.pth")
    assert loaded.task is None and loaded.num_classes == 3 and loaded.category_ids == [4, 7, 9]
    assert not loaded.model.training


def test_files_without_a_fitting_detector_are_refused_by_name(tmp_path: Path) -> None:
    trunk_only = {"model": {"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)}, "task": "swav",
                  "config": {"backbone": "resnet18"}}
    torch.save(trunk_only, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="backbone.pth: holds no detector"):
        load_detector(tmp_path / "backbone.pth")
    model = _tiny(num_classes=1)
    wrong = to_plain(model.config) | {"hidden_dim": 32}
    torch.save({"model": model.state_dict(), "task": "detreg", "config": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="wrong.pth: the weights do not fit"):
        load_detector(tmp_path / "wrong.pth")
