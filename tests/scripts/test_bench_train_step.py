"""scripts/bench_train_step.py runs end to end at a toy size and records both models (no timing asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_train_step.py"


def test_train_step_benchmark_checks_agreement_and_writes_both_models(tmp_path: Path) -> None:
    output = tmp_path / "train_step.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "tiny", "--batch", "1", "--image-size", "64", "80",
         "--repeats", "1", "--warmup", "0", "--threads", "1", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| tiny | 1 x 64x80 |" in result.stdout
    (row,) = json.loads(output.read_text())["results"]
    assert row["max_output_difference"] < 1e-4
    assert math.isclose(row["loss_ours"], row["loss_transformers"], rel_tol=1e-4)
    for name in ("ours", "transformers"):
        assert row["median_ms"][name] > 0
        assert row["peak_mb"][name] is None or row["peak_mb"][name] > 0
