"""What the benchmark-script tests share: run ``scripts/bench_<name>.py`` at a toy size, check the JSON every
benchmark writes (``detr_ssl.bench_cli.BenchRun``) and render its README blocks from it
(``detr_ssl.bench_report``). Timings are only checked to be positive and finite, never compared."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from detr_ssl.bench_report import Renderer, regenerate

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SHARED_FIELDS = {"bench", "command", "date", "duration_s", "machine", "versions", "background_load", "load_average",
                 "args", "timings_ms", "results"}


def positive_finite(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def run_bench(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    """Runs ``scripts/bench_<name>.py flags --output <tmp>/bench/<name>.json`` in this process (torch and the
    models are imported once for all tests), checks the shared fields of what it wrote and that the README
    blocks render from it; returns the JSON. torch's thread count is restored afterwards."""
    output = tmp_path / "bench" / f"{name}.json"
    threads = torch.get_num_threads()
    try:
        assert Renderer(tmp_path, SCRIPTS).script(name).main([*flags, "--output", str(output)]) == 0
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    payload = json.loads(output.read_text())
    assert SHARED_FIELDS <= payload.keys()
    assert payload["bench"] == name
    assert payload["command"].startswith(f"python scripts/bench_{name}.py ")
    assert {"cpu", "cores", "threads", "platform", "python"} <= payload["machine"].keys()
    assert payload["versions"]["torch"] and payload["versions"]["detr-ssl"]
    for label, methods in payload["timings_ms"].items():
        assert methods and all(times and positive_finite(*times) for times in methods.values()), label
        load = payload["background_load"][label]
        assert load is None or 0 <= load <= 1
    _check_rendering(name, payload, stdout, tmp_path)
    return payload


def _check_rendering(name: str, payload: dict[str, Any], stdout: str, tmp_path: Path) -> None:
    """The script printed its README table; the README blocks of its JSON render that table, and a summary row."""
    markdown = f"<!-- bench:table {name} -->\nold\n<!-- /bench -->\n\n<!-- bench:summary {name} -->\n<!-- /bench -->\n"
    result = regenerate(markdown, Renderer(tmp_path / "bench", SCRIPTS))
    assert not result.pending
    table = result.text.split("<!-- /bench -->")[0]
    assert "old" not in table and "|---|" in table
    script_table = stdout[stdout.index("\n", stdout.index("wrote ")) + 1:].strip()
    assert script_table in table
    assert f"| `python scripts/bench_{name}.py " in result.text
    assert regenerate(result.text, Renderer(tmp_path / "bench", SCRIPTS)).text == result.text
