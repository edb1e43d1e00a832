"""scripts/finetune.py as users run it: complete --help, one-line errors. Its 2-process Accelerate training
is tested in tests/reliability/test_distributed_equality.py (one launch serves that check and the resume)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from detr_ssl.cli.common import run_main
from detr_ssl.cli.finetune import initial_model_config, main
from detr_ssl.config import FINETUNE_PRESETS

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_flag(tmp_path: Path) -> None:
    result = _run([sys.executable, str(REPO / "scripts" / "finetune.py"), "--help"], tmp_path)
    assert result.returncode == 0
    for flag in ("--train-json", "--val-json", "--images", "--output-dir", "--pretrained", "--model-size",
                 "--epochs", "--batch-size", "--lr", "--resume", "--model.two-stage", "--model.with-box-refine"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("problem", ["missing", "syntax", "zero_box", "unknown_category"])
def test_bad_input_is_one_clear_line(problem: str, make_coco, coco_document, tmp_path: Path, capsys) -> None:
    if problem == "missing":
        train = tmp_path / "nowhere.json"
        images = tmp_path
    else:
        if problem == "zero_box":
            coco_document["annotations"][0]["bbox"] = [4, 6, 0, 10]
        if problem == "unknown_category":
            coco_document["annotations"][0]["category_id"] = 77
        files = make_coco(**coco_document)
        train, images = files.annotation_file, files.image_dir
        if problem == "syntax":
            train.write_text(train.read_text()[:-5])
    code = run_main(main, ["--train-json", str(train), "--val-json", str(train), "--images", str(images),
                           "--model-size", "tiny", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert train.name in err


def test_train_json_without_val_json_is_a_config_error(tmp_path: Path, capsys) -> None:
    code = run_main(main, ["--train-json", str(tmp_path / "t.json")])
    assert code == 2 and "--val-json" in capsys.readouterr().err


def test_error_from_a_dataloader_worker_is_still_one_line(make_coco, coco_document, tmp_path: Path, capsys) -> None:
    files = make_coco(**coco_document)
    (files.image_dir / "b.png").write_bytes(b"\x89PNG truncated")
    code = run_main(main, ["--train-json", str(files.annotation_file), "--val-json", str(files.annotation_file),
                           "--images", str(files.image_dir), "--model-size", "tiny", "--num-workers", "1",
                           "--epochs", "1", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    final = err.splitlines()[-1]  # a progress bar may have been drawn before the failure
    assert code == 2 and "Traceback" not in err and final.startswith("error: ") and "b.png" in final, err


def test_invalid_boxes_stop_the_run_unless_dropped_on_the_command_line(make_coco, coco_document, tmp_path: Path,
                                                                        capsys) -> None:
    coco_document["annotations"][0]["bbox"] = [4, 6, 0, 10]  # zero width
    files = make_coco(**coco_document)
    flags = ["--train-json", str(files.annotation_file), "--val-json", str(files.annotation_file),
             "--images", str(files.image_dir), "--model-size", "tiny", "--num-workers", "0", "--epochs", "1",
             "--train-scales", "64", "--max-size", "64", "--eval-size", "64", "--crop", "None",
             "--output-dir", str(tmp_path / "out")]
    assert run_main(main, flags) == 2
    assert "--on-invalid-box drop" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="1 annotation"):
        assert run_main(main, [*flags, "--on-invalid-box", "drop"]) == 0
    assert (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.parametrize(("preset", "backbone_init", "checkpoint_norm", "frozen"), [
    ("demo", None, None, 0),  # trained from scratch: every stage trains
    ("demo", Path("swav.pth"), None, 1),  # a pretrained backbone: stem and layer1 frozen, as released
    ("demo", None, "frozen_bn", 1),  # a frozen-BN pretrained detector (DetReg): the same
    ("demo", None, "group_norm", 0),  # a GroupNorm one keeps training from its own start
    ("paper", None, "frozen_bn", 1),  # the paper preset already freezes them
])
def test_a_pretrained_frozen_bn_backbone_keeps_the_stem_and_layer1_frozen(
        preset: str, backbone_init: Path | None, checkpoint_norm: str | None, frozen: int) -> None:
    cfg = replace(FINETUNE_PRESETS[preset](), backbone_init=backbone_init)
    checkpoint = None if checkpoint_norm is None else {"config": {"backbone_norm": checkpoint_norm}}
    model = initial_model_config(cfg, checkpoint)
    assert model.backbone_frozen_stages == frozen
    expected_norm = checkpoint_norm or ("frozen_bn" if backbone_init is not None or preset == "paper" else "group_norm")
    assert model.backbone_norm == expected_norm
