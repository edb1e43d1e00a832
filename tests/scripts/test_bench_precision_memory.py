"""Smoke tests of scripts/bench_compile.py and scripts/bench_memory.py at toy sizes: they run, write the shared
JSON with positive finite numbers and render their README tables (timings are not judged)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench_runs import positive_finite, run_bench


def test_bench_compile_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Dynamo tracing only (backend eager): the compiled path without minutes of code generation.
    try:
        payload = run_bench("compile", tmp_path, capsys, "--backend", "eager", "--image-size", "32", "--batch-size",
                            "1", "--repeats", "1", "--warmup", "0", "--compile-steps", "1", "--threads", "1")
    finally:
        torch._dynamo.reset()  # the traced model's caches stay in this process otherwise
    [result] = payload["results"]
    assert result["model_size"] == "tiny"
    for key in ("eager_ms", "compiled_ms", "speedup", "eager_first_step_s"):
        assert positive_finite(result[key]), (key, result[key])
    assert math.isfinite(result["compile_s"])  # a difference of times: may be ~0 for a tracing-only backend
    assert positive_finite(*result["first_step_loss"].values())
    assert result["first_step_loss_diff"] < 1e-3
    assert set(payload["timings_ms"]["tiny"]) == {"eager", "compiled"}


def test_bench_memory_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Peak memory is measured in fresh processes (tests/test_benchmarking.py checks that tool); skipped here.
    payload = run_bench("memory", tmp_path, capsys, "--batch-size", "1", "--image-size", "32", "--repeats", "1",
                        "--no-memory", "--threads", "1")
    [result] = payload["results"]
    assert (result["model_size"], result["batch_size"], result["image_size"]) == ("tiny", 1, 32)
    for key in ("plain_ms", "checkpointed_ms", "time_ratio"):
        assert positive_finite(result[key]), (key, result[key])
    assert result["plain_peak_mib"] is None and result["memory_ratio"] is None
