"""scripts/pretrain.py as users run it: task choice errors, 2-process pretraining, fine-tuning from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detr_ssl.cli.common import run_main
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


@pytest.mark.slow
def test_two_process_pretraining_then_fine_tuning(tmp_path: Path, demo_photos: Path, small_coco_subset) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = tmp_path / "pre"
    result = subprocess.run([*launch, str(REPO / "scripts" / "pretrain.py"), "--task", "updetr", "--epochs", "1",
                             "--max-size", "96", "--train-scales", "96", "--output-dir", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "pretrained.pth").is_file()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"), "--preset", "demo",
                             *small_coco_subset, "--pretrained", str(out / "pretrained.pth"), "--epochs", "1",
                             "--output-dir", str(tmp_path / "ft")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised from" in result.stdout and (tmp_path / "ft" / "metrics.json").is_file()
