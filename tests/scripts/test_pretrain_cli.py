"""scripts/pretrain.py as users run it: task choice errors, 2-process pretraining, fine-tuning from it."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest
from launch import TWO_CPU_PROCESSES, run_captured

from detr_ssl.cli.common import run_main
from detr_ssl.cli.finetune import main as finetune_main
from detr_ssl.cli.pretrain import main

REPO = Path(__file__).resolve().parents[2]


def test_unknown_task_is_one_line_listing_choices(capsys) -> None:
    code = run_main(main, ["--task", "mae"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: unknown task 'mae'") and "detreg" in err and "updetr" in err


def test_missing_data_folder_is_one_clear_line(tmp_path: Path, capsys) -> None:
    code = run_main(main, ["--task", "updetr", "--data", str(tmp_path / "photos"), "--model-size", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "photos" in err


def test_require_cache_without_cache_entries_fails_clearly(tmp_path: Path, demo_photos: Path, capsys) -> None:
    code = run_main(main, ["--task", "detreg", "--require-cache", "--proposal-cache", str(tmp_path / "cache"),
                           "--epochs", "1", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "precompute_proposals" in err


def _two_process_pretraining(args: list[str], cwd: Path) -> None:
    """scripts/pretrain.py in two CPU processes (tests/launch.py), one intra-op thread each."""
    result = subprocess.run([*TWO_CPU_PROCESSES, str(REPO / "scripts" / "pretrain.py"), "--cpu", *args], cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2 processes)" in result.stdout


def _fine_tune(pretrained: Path, data_flags: list[str], out: Path) -> str:
    """One epoch of scripts/finetune.py's demo preset from ``pretrained``, run in this process (the entry
    point the script calls, without a new interpreter's start-up); returns its standard output."""
    code, stdout = run_captured(finetune_main, ["--preset", "demo", *data_flags, "--pretrained", str(pretrained),
                                                "--epochs", "1", "--output-dir", str(out)])
    assert code == 0, stdout[-3000:]
    return stdout


@pytest.mark.slow
def test_two_process_pretraining_then_fine_tuning(tmp_path: Path, demo_photos: Path, small_coco_subset,
                                                  one_thread) -> None:
    out = tmp_path / "pre"
    _two_process_pretraining(["--task", "updetr", "--epochs", "1", "--max-size", "96", "--train-scales", "96",
                              "--output-dir", str(out)], tmp_path)
    assert (out / "pretrained.pth").is_file()
    stdout = _fine_tune(out / "pretrained.pth", small_coco_subset, tmp_path / "ft")
    assert "initialised from" in stdout and (tmp_path / "ft" / "metrics.json").is_file()


@pytest.mark.slow
def test_the_swav_detreg_finetune_chain(tmp_path: Path, demo_photos: Path, small_coco_subset, one_thread) -> None:
    """The documented chain at tiny scale: 2-process SwAV -> DetReg with the SwAV teacher and backbone init ->
    fine-tuning, which keeps the SwAV-initialised frozen-BN backbone it was given."""
    import torch

    swav = tmp_path / "swav"
    _two_process_pretraining(["--task", "swav", "--max-steps", "2", "--batch-size", "4", "--crops.global-size", "32",
                              "--crops.local-size", "16", "--output-dir", str(swav)], tmp_path)
    layout = swav / "backbone_swav_layout.pth"
    detreg = tmp_path / "detreg"
    # The paper preset (--data) with the ResNet-18 export as teacher: its architecture is read from the file.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _ = run_captured(main, [
            "--task", "detreg", "--data", str(demo_photos), "--model-size", "tiny", "--batch-size", "2",
            "--num-workers", "0", "--crop", "48", "96", "--teacher-checkpoint", str(layout),
            "--backbone-init", str(layout), "--max-steps", "2", "--max-size", "96", "--train-scales", "96",
            "--output-dir", str(detreg)])
    assert code == 0
    # The SwAV file is the teacher, not the fallback.
    assert not [w for w in caught if "no teacher checkpoint" in str(w.message)]
    swav_trunk = torch.load(layout, weights_only=True)
    detreg_model = torch.load(detreg / "pretrained.pth", weights_only=True)
    assert detreg_model["config"]["backbone_norm"] == "frozen_bn"
    # DetReg keeps the backbone frozen, so its export still holds the SwAV trunk exactly.
    torch.testing.assert_close(detreg_model["model"]["backbone.body.layer1.0.conv1.weight"],
                               swav_trunk["module.layer1.0.conv1.weight"])
    stdout = _fine_tune(detreg / "pretrained.pth", small_coco_subset, tmp_path / "ft")
    assert "backbone normalisation frozen_bn" in stdout
    finetuned = torch.load(tmp_path / "ft" / "checkpoint.pth", weights_only=True)["model"]
    assert "backbone.body.bn1.running_mean" in finetuned
    torch.testing.assert_close(finetuned["backbone.body.bn1.running_mean"], swav_trunk["module.bn1.running_mean"])
