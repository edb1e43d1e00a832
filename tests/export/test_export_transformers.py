"""A detector exported to transformers loads offline there and detects exactly what ours detects."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ssl.cli.export_transformers import cli
from detr_ssl.config import to_plain
from detr_ssl.datasets.transforms import make_eval_transforms
from detr_ssl.errors import CheckpointError
from detr_ssl.evaluation.postprocess import postprocess
from detr_ssl.export.transformers_export import EXPORTED_FILES, export_transformers
from detr_ssl.models.config import ModelConfig, model_preset
from detr_ssl.models.deformable_detr import DeformableDETR
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.models.pair_detr import PairDETR
from detr_ssl.models.transformers_interop import build_transformers_detector, transformers_state_dict

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parents[2]
BASE = replace(model_preset("tiny"), backbone="resnet18", backbone_norm="frozen_bn", backbone_frozen_stages=1,
               hidden_dim=32, num_heads=2, ffn_dim=32, num_queries=30, num_feature_levels=4)
VARIANTS = {"base": BASE, "box_refine": replace(BASE, with_box_refine=True),
            "two_stage": replace(BASE, with_box_refine=True, two_stage=True)}
NAMES = ["cat", "dog", "bird", "car", "bus"]
COCO_IDS = [17, 18, 16, 3, 6]
EVAL_SIZE, MAX_SIZE = 64, 100


def _save_finetune(path: Path, model: torch.nn.Module, config: ModelConfig, num_classes: int,
                   architecture: str = "deformable_detr", names: list[str] | None = None) -> Path:
    """A fine-tuning checkpoint of the layout ``scripts/finetune.py`` writes."""
    run = {"architecture": architecture, "model": to_plain(config),
           "data": {"eval_size": EVAL_SIZE, "max_size": MAX_SIZE}}
    torch.save({"model": model.state_dict(), "config": run, "num_classes": num_classes,
                "category_ids": COCO_IDS[:num_classes], "category_names": names}, path)
    return path


def _detector(config: ModelConfig, num_classes: int = len(NAMES)) -> DeformableDETR:
    torch.manual_seed(0)
    model = DeformableDETR(config, num_classes)
    with torch.no_grad():  # heads away from their constant initial biases, so scores and boxes spread
        for head in model.class_heads:
            head.bias.normal_()
    return model.eval()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No request may reach the hub (huggingface_hub reads the variable once, at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[DeformableDETR, Path]]:
    """Our detector of a variant and the directory its checkpoint was exported to (each made once)."""
    @cache
    def export(variant: str) -> tuple[DeformableDETR, Path]:
        root = tmp_path_factory.mktemp(variant)
        model = _detector(VARIANTS[variant])
        checkpoint = _save_finetune(root / "checkpoint.pth", model, model.config, len(NAMES), names=NAMES)
        return model, export_transformers(checkpoint, root / "hf")

    return export


def _assert_same_detections(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Same scores in the same order; a detection whose label or box differs must be tied in score with
    an equal detection of the other list."""
    torch.testing.assert_close(theirs["scores"], ours["scores"], rtol=0, atol=1e-4)
    for i, (label, box, score) in enumerate(zip(ours["labels"], ours["boxes"], ours["scores"])):
        if theirs["labels"][i] == label and (theirs["boxes"][i] - box).abs().max() <= 1e-4:
            continue
        tied = ((theirs["scores"] - score).abs() <= 1e-5) & (theirs["labels"] == label)
        assert (tied & ((theirs["boxes"] - box).abs().amax(dim=1) <= 1e-4)).any(), f"detection {i} differs"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_detector_detects_what_ours_detects(variant: str, exported: Callable) -> None:
    ours, out_dir = exported(variant)
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(EXPORTED_FILES)
    theirs = transformers.DeformableDetrForObjectDetection.from_pretrained(out_dir).eval()
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    padding = torch.zeros(2, 64, 96, dtype=torch.bool)
    padding[1, :, 72:] = True
    padding[1, 48:] = True
    with torch.no_grad():
        mine = ours(images, padding)
        reference = theirs(pixel_values=images, pixel_mask=(~padding).long())
    torch.testing.assert_close(reference.logits, mine.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(reference.pred_boxes, mine.boxes, rtol=0, atol=1e-4)
    sizes = torch.tensor([[64, 96], [48, 72]])
    ours_top = postprocess(mine, sizes)
    theirs_top = postprocess(DetectionOutput(logits=reference.logits, boxes=reference.pred_boxes), sizes)
    assert len(ours_top[0]["scores"]) == 100
    for image_ours, image_theirs in zip(ours_top, theirs_top):
        _assert_same_detections(image_ours, image_theirs)


def _find(document: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a JSON document."""
    if isinstance(document, dict):
        return [v for k, v in document.items() if k == key] + [x for v in document.values() for x in _find(v, key)]
    if isinstance(document, list):
        return [x for v in document for x in _find(v, key)]
    return []


def test_labels_and_coco_ids_come_from_the_checkpoint(exported: Callable) -> None:
    _, out_dir = exported("base")
    document = json.loads((out_dir / "config.json").read_text())
    assert document["id2label"] == {str(i): name for i, name in enumerate(NAMES)}
    assert document["label2id"] == {name: i for i, name in enumerate(NAMES)}
    assert document["category_ids"] == COCO_IDS
    backbone_downloads = _find(document, "use_pretrained_backbone")
    assert backbone_downloads and not any(backbone_downloads)
    config = transformers.AutoConfig.from_pretrained(out_dir)
    assert config.category_ids[config.label2id["dog"]] == 18


def test_image_processor_resizes_and_normalises_as_our_evaluation(exported: Callable) -> None:
    _, out_dir = exported("base")
    processor = transformers.AutoImageProcessor.from_pretrained(out_dir)
    rng = np.random.default_rng(0)
    # Smooth content: the two bilinear resizes agree to within rounding; 96 x 128 scales to 64 x 85.33, whose
    # long side transformers truncates and we round to the same 85.
    small = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
    image = small.resize((128, 96), Image.BILINEAR)
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours, _ = make_eval_transforms(EVAL_SIZE, MAX_SIZE)(image, {})
    assert theirs.shape == ours.shape == (3, EVAL_SIZE, 85)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0.05)


def test_a_pretext_checkpoint_exports_one_object_class(tmp_path: Path) -> None:
    model = _detector(BASE, num_classes=1)
    torch.save({"model": model.state_dict(), "task": "detreg", "config": to_plain(model.config)},
               tmp_path / "pretrained.pth")
    out_dir = export_transformers(tmp_path / "pretrained.pth", tmp_path / "hf")
    config = transformers.AutoConfig.from_pretrained(out_dir)
    assert config.id2label == {0: "object"} and config.category_ids is None


def test_unnamed_classes_get_placeholder_labels(tmp_path: Path) -> None:
    checkpoint = _save_finetune(tmp_path / "checkpoint.pth", _detector(BASE, 2), BASE, 2)
    out_dir = export_transformers(checkpoint, tmp_path / "hf")
    config = transformers.AutoConfig.from_pretrained(out_dir)
    assert config.id2label == {0: "class_0", 1: "class_1"} and config.category_ids == COCO_IDS[:2]


def _pair_detr(path: Path) -> Path:
    torch.manual_seed(0)
    return _save_finetune(path, PairDETR(BASE, 3), BASE, 3, architecture="pairdetr")


def _group_norm(path: Path) -> Path:
    config = replace(BASE, backbone_norm="group_norm", backbone_frozen_stages=0)
    return _save_finetune(path, _detector(config, 3), config, 3)


def _backbone_only(path: Path) -> Path:
    torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)}, "task": "swav",
                "config": {"backbone": "resnet18"}}, path)
    return path


@pytest.mark.parametrize(("write", "problem"), [(_pair_detr, "PairDETR detector has no transformers counterpart"),
                                                (_group_norm, "frozen-BN backbone only"),
                                                (_backbone_only, "holds no detector")])
def test_files_without_a_transformers_counterpart_are_refused_by_name(
        write: Callable[[Path], Path], problem: str, tmp_path: Path) -> None:
    path = write(tmp_path / "some_checkpoint.pth")
    with pytest.raises(CheckpointError) as error:
        export_transformers(path, tmp_path / "hf")
    message = str(error.value)
    assert str(path) in message and problem in message and "\n" not in message
    assert not (tmp_path / "hf").exists()


def test_script_reports_a_missing_file_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "gone.pth"
    monkeypatch.setattr(sys, "argv", ["export_hf.py", str(missing), str(tmp_path / "hf")])
    assert cli() == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(missing) in err and err.count("\n") == 1


def test_script_writes_the_directory_and_says_how_to_load_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _save_finetune(tmp_path / "checkpoint.pth", _detector(BASE, 2), BASE, 2)
    monkeypatch.setattr(sys, "argv", ["export_hf.py", str(checkpoint), str(tmp_path / "hf")])
    assert cli() == 0
    printed = capsys.readouterr().out
    assert "DeformableDetrForObjectDetection.from_pretrained" in printed and str(tmp_path / "hf") in printed
    assert all((tmp_path / "hf" / name).is_file() for name in EXPORTED_FILES)


def test_script_help_names_its_arguments(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The script file itself, run in this process as ``python scripts/export_hf.py --help`` would run it."""
    script = REPO / "scripts" / "export_hf.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_status.value.code == 0 and "CHECKPOINT OUT_DIR" in capsys.readouterr().out


@pytest.mark.parametrize(("ours", "theirs", "problem"), [
    (replace(BASE, num_feature_levels=3), BASE, r"our level_embed has \(3, 32\) for transformers' model.level_embed"),
    (BASE, replace(BASE, num_feature_levels=3), "our level_embed, .* have more rows than"),
    (BASE, VARIANTS["two_stage"], "transformers' model.enc_output.weight has no counterpart")])
def test_tensors_without_a_counterpart_are_an_error(ours: ModelConfig, theirs: ModelConfig, problem: str) -> None:
    """The inverse mapping never drops a trained tensor nor leaves one of transformers' at its random init."""
    with pytest.raises(ValueError, match=problem):
        transformers_state_dict(_detector(ours, num_classes=2), build_transformers_detector(theirs, num_classes=2))
