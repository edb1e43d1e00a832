"""``scripts/bench_matcher.py`` runs every method at toy sizes, checks they agree, and writes the shared JSON
(``tests/bench_runs.py``). Timings are never compared."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_runs import SCRIPTS, positive_finite, run_bench

from detr_ssl.bench_report import Renderer


def test_bench_matcher_times_every_method_at_every_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_bench("matcher", tmp_path, capsys, "--sizes", "2x12x4", "3x10x12", "--classes", "5",
                        "--repeats", "2", "--warmup", "0", "--threads", "1")

    results = payload["results"]
    methods = {"ours (HungarianMatcher)", "ours, padded (B, Q, K_max) batch path",
               "DETR reference: one (B*Q, sum K) cost, split", "per-image loop"}
    assert [row["size"] for row in results["sizes"]] == ["2x12x4", "3x10x12"]
    assert set(payload["timings_ms"]) == {"2x12x4", "3x10x12"}
    assert set(results["targets"]) < methods
    for row in results["sizes"]:
        assert set(row["median_ms"]) == set(row["total_cost"]) == methods
        assert set(row["ours_speedup"]) == methods - {"ours (HungarianMatcher)"}
        assert positive_finite(*row["median_ms"].values(), *row["ours_speedup"].values())
        assert max(row["total_cost"].values()) - min(row["total_cost"].values()) < 1e-4
    assert len(results["sizes"][1]["targets"]) == 3 and max(results["sizes"][1]["targets"]) > 10  # K > Q


def test_bench_matcher_rejects_a_malformed_size(capsys: pytest.CaptureFixture[str]) -> None:
    script = Renderer(Path("."), SCRIPTS).script("matcher")
    with pytest.raises(SystemExit):
        script.parse_args(["--sizes", "16x300"])
    assert "expected BxQxK" in capsys.readouterr().err
