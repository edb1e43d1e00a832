"""Benchmark scripts run end to end at tiny sizes and write their JSON; timings are only checked to be
positive and finite (never compared: the machine is shared)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run_script(name: str, output: Path, *flags: str) -> dict:
    """Runs ``scripts/<name>`` with ``flags`` and ``--output``; returns the JSON it wrote."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *flags, "--output", str(output)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "|---|" in result.stdout  # the markdown table
    payload = json.loads(output.read_text())
    assert {"device", "threads", "torch"} <= set(payload["environment"])
    return payload["results"]


def _positive(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def test_bench_dataloader_writes_rates_per_worker_count(tmp_path: Path) -> None:
    results = _run_script("bench_dataloader.py", tmp_path / "dataloader.json", "--num-images", "6", "--image-size",
                          "64", "--batch-size", "2", "--workers", "0", "1", "--step-batches", "1", "--repeats", "1",
                          "--warmup", "0")

    assert _positive(results["model_step_ms"], results["model_images_per_s"])
    assert set(results["workers"]) == {"0", "1"}
    for rates in results["workers"].values():
        assert _positive(rates["loader_images_per_s"], rates["loader_vs_model"], rates["loop_images_per_s"],
                         rates["loop_vs_model"])


def test_bench_pretrain_step_writes_every_phase(tmp_path: Path) -> None:
    results = _run_script("bench_pretrain_step.py", tmp_path / "pretrain_step.json", "--num-images", "2",
                          "--batch-size", "2", "--batches", "1", "--crop-size", "32", "--repeats", "1",
                          "--warmup", "0")

    tiny = results["tiny"]
    phases = ("proposals", "crops", "teacher", "model forward", "loss", "backward + step")
    assert set(tiny["phase_ms"]) == set(phases)
    assert _positive(*tiny["phase_ms"].values(), *tiny["phase_share"].values(), tiny["teacher_crop_path_share"],
                     tiny["unsplit_step_ms"], tiny["phases_vs_unsplit"])
    assert math.isclose(sum(tiny["phase_share"].values()), 1.0)
    assert tiny["crop_size"] == 32 and tiny["batch_size"] == 2


def test_bench_coco_eval_times_both_backends_on_the_same_numbers(tmp_path: Path) -> None:
    results = _run_script("bench_coco_eval.py", tmp_path / "coco_eval.json", "--images", "40", "--repeats", "1")

    assert _positive(results["speedup"], *results["median_ms"].values())
    assert results["stats"]["pycocotools"] == results["stats"]["faster-coco-eval"]
