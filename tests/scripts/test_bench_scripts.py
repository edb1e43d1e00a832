"""Benchmark scripts run end to end at toy sizes, write the shared JSON and render their README tables from
it (``tests/bench_runs.py``); their ``--help`` imports no torch. Timings are never compared."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from bench_runs import SCRIPTS, positive_finite, run_bench

BENCH_SCRIPTS = sorted(path.name for path in SCRIPTS.glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_help_answers_without_importing_torch(script: str) -> None:
    check = ("import runpy, sys\n"
             f"sys.argv = [{str(SCRIPTS / script)!r}, '--help']\n"
             "try:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as exc:\n"
             "    assert exc.code in (0, None), exc.code\n"
             "print(sorted(m for m in ('torch', 'transformers', 'cv2', 'matplotlib') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_bench_dataloader_writes_rates_per_worker_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_bench("dataloader", tmp_path, capsys, "--num-images", "4", "--image-size", "48", "--batch-size", "2",
                        "--workers", "0", "1", "--step-batches", "1", "--repeats", "1", "--warmup", "0",
                        "--threads", "1")

    results = payload["results"]
    assert positive_finite(results["model_step_ms"], results["model_images_per_s"])
    assert set(results["workers"]) == {"0", "1"}
    for rates in results["workers"].values():
        assert positive_finite(rates["loader_images_per_s"], rates["loader_vs_model"], rates["loop_images_per_s"],
                               rates["loop_vs_model"])
    assert set(payload["timings_ms"]["model step and loader passes"]) == {"model step", "loader, 0 workers",
                                                                          "loader, 1 workers"}


def test_bench_pretrain_step_writes_every_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_bench("pretrain_step", tmp_path, capsys, "--num-images", "2", "--batch-size", "2", "--batches", "1",
                        "--crop-size", "32", "--repeats", "1", "--warmup", "0", "--threads", "1")

    tiny = payload["results"]["tiny"]
    phases = ("proposals", "crops", "teacher", "model forward", "loss", "backward + step")
    assert set(tiny["phase_ms"]) == set(phases)
    assert positive_finite(*tiny["phase_ms"].values(), *tiny["phase_share"].values(), tiny["teacher_crop_path_share"],
                           tiny["unsplit_step_ms"], tiny["phases_vs_unsplit"])
    assert math.isclose(sum(tiny["phase_share"].values()), 1.0)
    assert tiny["crop_size"] == 32 and tiny["batch_size"] == 2
    assert len(tiny["phase_runs_ms"]) == 1


def test_bench_coco_eval_times_both_backends_on_the_same_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_bench("coco_eval", tmp_path, capsys, "--images", "20", "--repeats", "1")

    results = payload["results"]
    assert positive_finite(results["speedup"], *results["median_ms"].values())
    assert results["stats"]["pycocotools"] == results["stats"]["faster-coco-eval"]
    assert payload["versions"]["pycocotools"]


def test_bench_msda_times_every_method_and_mode_against_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_bench("msda", tmp_path, capsys, "--cases", "decoder", "--repeats", "1", "--warmup", "0", "--no-memory",
                        "--threads", "1")

    rows = payload["results"]["rows"]
    assert {(r["mode"], r["method"]) for r in rows} == {(m, n) for m in ("fwd", "fwd+bwd")
                                                       for n in ("reference", "pytorch")}
    assert all(positive_finite(r["median_ms"], r["speedup_vs_reference"]) for r in rows)
    assert set(payload["timings_ms"]) == {"decoder fwd", "decoder fwd+bwd"}


def test_bench_proposals_times_workers_and_cache_hits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_bench("proposals", tmp_path, capsys, "--num-images", "2", "--repeats", "1")

    results = payload["results"]
    assert results["num_images"] == 2
    assert positive_finite(results["speedup_2_vs_1_workers"], results["per_image_cache_hit_ms"],
                           results["per_image_on_the_fly_ms"])
    assert [len(times) for times in payload["timings_ms"]["per image"].values()] == [2, 2]
