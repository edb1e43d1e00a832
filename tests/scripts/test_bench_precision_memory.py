"""Smoke tests of scripts/bench_compile.py and scripts/bench_memory.py at tiny sizes: they run, print their
table and write JSON with the expected keys and positive finite numbers (timings are not judged)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run_bench(script: str, args: list[str], tmp_path: Path) -> dict:
    output = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args, "--threads", "1",
                             "--output", str(output)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("| model |"), result.stdout  # the markdown table
    payload = json.loads(output.read_text())
    assert {"environment", "settings", "results"} <= payload.keys()
    return payload


def _positive_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_compile_smoke(tmp_path: Path) -> None:
    # Dynamo tracing only (backend eager): the compiled path without minutes of code generation.
    payload = _run_bench("bench_compile.py", ["--backend", "eager", "--image-size", "64", "--batch-size", "1",
                                              "--repeats", "1", "--compile-steps", "1"], tmp_path)
    [result] = payload["results"]
    assert result["model_size"] == "tiny"
    for key in ("eager_ms", "compiled_ms", "speedup", "eager_first_step_s"):
        assert _positive_finite(result[key]), (key, result[key])
    assert math.isfinite(result["compile_s"])  # a difference of times: may be ~0 for a tracing-only backend
    assert all(_positive_finite(v) for v in result["first_step_loss"].values())
    assert result["first_step_loss_diff"] < 1e-3


def test_bench_memory_smoke(tmp_path: Path) -> None:
    payload = _run_bench("bench_memory.py", ["--batch-size", "1", "--image-size", "64", "--repeats", "1"], tmp_path)
    [result] = payload["results"]
    assert (result["model_size"], result["batch_size"], result["image_size"]) == ("tiny", 1, 64)
    keys = ["plain_ms", "checkpointed_ms", "time_ratio"]
    if sys.platform.startswith("linux"):  # peak memory is measured on Linux only
        keys += ["plain_peak_mib", "checkpointed_peak_mib", "memory_ratio"]
    for key in keys:
        assert _positive_finite(result[key]), (key, result[key])
