"""scripts/bench_train_step.py runs end to end at a toy size: both models agree, both are timed, and the shared
JSON renders the README table (no timing asserted)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from bench_runs import positive_finite, run_bench

pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")


def test_train_step_benchmark_checks_agreement_and_writes_both_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_bench("train_step", tmp_path, capsys, "--sizes", "tiny", "--batch", "1", "--image-size", "32", "48",
                        "--repeats", "1", "--warmup", "0", "--no-memory", "--threads", "1")
    (row,) = payload["results"]
    assert (row["size"], row["batch"], row["image"]) == ("tiny", 1, [32, 48])
    assert row["max_output_difference"] < 1e-4
    assert math.isclose(row["loss_ours"], row["loss_transformers"], rel_tol=1e-4)
    assert positive_finite(*row["median_ms"].values())
    assert row["peak_mb"] == {"ours": None, "transformers": None}
    assert payload["versions"]["transformers"]
