"""Weights files as safetensors: written by scripts/to_safetensors.py, read wherever a .pth weights file is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from detr_ssl.cli.common import run_main
from detr_ssl.cli.to_safetensors import main as convert_main
from detr_ssl.config import to_plain
from detr_ssl.detector import load_detector
from detr_ssl.engine.checkpoint import TRAINING_STATE_KEYS, load_pretrained
from detr_ssl.errors import CheckpointError
from detr_ssl.models.checkpoint_io import load_untrusted, save_safetensors
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model


def _assert_same(left: object, right: object) -> None:
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype and torch.equal(left, right)
    elif isinstance(left, dict):
        assert isinstance(right, dict) and set(left) == set(right)
        for key in left:
            _assert_same(left[key], right[key])
    else:
        assert left == right


def test_a_nested_checkpoint_round_trips_exactly(tmp_path: Path) -> None:
    checkpoint = {"model": {"backbone.body.conv1.weight": torch.randn(4, 3, 2, 2),
                            "step_count": torch.tensor(7, dtype=torch.int64)},
                  "task": "updetr", "config": {"hidden_dim": 32, "scales": [96, 128], "weights": None},
                  "input_size": [128, 213], "empty": {},
                  "query_patch": {"patch_projection": {"weight": torch.randn(2, 3), "bias": torch.zeros(2)},
                                  "patch_size": 128}}
    save_safetensors(checkpoint, tmp_path / "pretrained.safetensors")
    _assert_same(load_untrusted(tmp_path / "pretrained.safetensors"), checkpoint)


def test_a_training_checkpoint_converts_to_its_weights_and_loads_everywhere(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(model_preset("tiny"), num_classes=3)
    checkpoint = {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 2,
                  "step": 10, "batch_in_epoch": 0, "rng": {}, "rng_per_process": [], "lr_scheduler": {},
                  "config": {"architecture": "deformable_detr", "model": to_plain(model.config)},
                  "num_classes": 3, "category_ids": [2, 5, 9], "category_names": ["a", "b", "c"]}
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    assert run_main(convert_main, [str(tmp_path / "checkpoint.pth")]) == 0
    converted = load_untrusted(tmp_path / "checkpoint.safetensors")
    assert not set(TRAINING_STATE_KEYS) & set(converted) and converted["category_names"] == ["a", "b", "c"]
    loaded = load_detector(tmp_path / "checkpoint.safetensors")
    assert loaded.category_ids == [2, 5, 9]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    fresh = build_model(model_preset("tiny"), num_classes=3)
    assert load_pretrained(fresh, tmp_path / "checkpoint.safetensors") == ([], [])
    assert torch.equal(fresh.state_dict()["class_heads.0.weight"], model.state_dict()["class_heads.0.weight"])


def test_a_plain_state_dict_from_another_tool_reads_as_a_state_dict(tmp_path: Path) -> None:
    save_file({"conv1.weight": torch.ones(2, 3, 1, 1)}, tmp_path / "resnet.safetensors")
    assert set(load_untrusted(tmp_path / "resnet.safetensors")) == {"conv1.weight"}


def test_bad_safetensors_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="broken.safetensors: not a readable safetensors file"):
        load_untrusted(tmp_path / "broken.safetensors")
    torch.save({"model": {}}, tmp_path / "weights.pth")
    assert run_main(convert_main, [str(tmp_path / "weights.pth"), str(tmp_path / "weights.bin")]) == 2
    assert "name the output *.safetensors" in capsys.readouterr().err
