"""README tables rendered from benchmark results (``detr_ssl.bench_report``, ``scripts/bench_report.py``): blocks
with their results are rewritten, the others are kept and listed, and the committed files are up to date."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from detr_ssl.bench_cli import BenchRun
from detr_ssl.bench_report import Renderer, find_blocks, regenerate, stale_files
from detr_ssl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TOY_SCRIPT = '''
def readme_table(payload):
    return "| method | ms |\\n|---|---|\\n" + "\\n".join(
        f"| {name} | {ms:.1f} |" for name, ms in payload["results"]["median_ms"].items())


def readme_summary(payload):
    return "the peer", ">= 2x", f"{payload['results']['speedup']:.2f}x"
'''


def report_cli():
    spec = importlib.util.spec_from_file_location("bench_report_cli", REPO / "scripts" / "bench_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def toy(tmp_path: Path) -> Renderer:
    """A stand-in ``scripts/bench_toy.py`` and the results it wrote to ``bench/toy.json``."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bench_toy.py").write_text(TOY_SCRIPT)
    argv = ["--output", str(tmp_path / "bench" / "toy.json")]
    run = BenchRun("toy", argparse.Namespace(output=tmp_path / "bench" / "toy.json"), argv)
    run.record("case", {"ours": [1.0, 3.0], "peer": [4.0, 6.0]}, 0.1)
    run.write({"median_ms": {"ours": 2.0, "peer": 5.0}, "speedup": 2.5})
    return Renderer(tmp_path / "bench", scripts)


def test_blocks_with_results_are_rendered_and_the_others_kept(toy: Renderer) -> None:
    text = ("# Performance\n\n<!-- bench:summary toy -->\nold summary\n<!-- /bench -->\n\nprose\n\n"
            "<!-- bench:table toy -->\n| method | ms |\n|---|---|\n| ours | 9.9 |\n<!-- /bench -->\n\n"
            "<!-- bench:table later -->\nhand-written, measured before\n<!-- /bench -->\n")
    result = regenerate(text, toy)

    assert "| ours | 2.0 |\n| peer | 5.0 |" in result.text and "9.9" not in result.text
    assert "| `python scripts/bench_toy.py` | the peer | >= 2x | 2.50x |" in result.text
    assert "old summary" not in result.text and "\nprose\n" in result.text
    assert "background load" in result.text  # the provenance line under the table
    assert "hand-written, measured before" in result.text
    assert len(result.pending) == 1 and "later.json" in result.pending[0]
    assert regenerate(result.text, toy).text == result.text


def test_an_edited_number_is_stale_until_regenerated(toy: Renderer, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(regenerate("<!-- bench:table toy -->\n<!-- /bench -->\n", toy).text)
    assert stale_files([readme], toy, write=False) == ([], [])
    readme.write_text(readme.read_text().replace("| 2.0 |", "| 1.9 |"))

    assert stale_files([readme], toy, write=False)[0] == [readme]
    assert stale_files([readme], toy, write=True)[0] == [readme]
    assert "| 2.0 |" in readme.read_text() and stale_files([readme], toy, write=False) == ([], [])


def test_check_fails_on_drift_and_strict_on_missing_results(toy: Renderer, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cli = report_cli()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:table toy -->\nstale\n<!-- /bench -->\n")
    flags = [str(readme), "--bench-dir", str(toy.bench_dir), "--scripts-dir", str(toy.scripts_dir)]
    assert cli.main([*flags, "--check"]) == 1
    assert cli.main(flags) == 0 and "stale" not in readme.read_text()
    assert cli.main([*flags, "--check", "--strict"]) == 0
    readme.write_text(readme.read_text() + "<!-- bench:summary toy missing -->\n<!-- /bench -->\n")
    assert cli.main([*flags, "--check"]) == 0
    assert cli.main([*flags, "--check", "--strict"]) == 1
    assert "missing.json" in capsys.readouterr().out


def test_malformed_markers_and_scripts_without_a_renderer_are_errors(toy: Renderer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="/bench"):
        find_blocks("<!-- bench:table toy -->\n| a |\n")
    (toy.scripts_dir / "bench_toy.py").write_text("def readme_summary(payload):\n    return 'a', 'b', 'c'\n")
    with pytest.raises(ConfigError, match="readme_table"):
        regenerate("<!-- bench:table toy -->\n<!-- /bench -->\n", Renderer(toy.bench_dir, toy.scripts_dir))


def test_the_committed_tables_match_the_committed_results() -> None:
    files = [REPO / "README.md", REPO / "docs" / "PERFORMANCE.md"]
    renderer = Renderer(REPO / "docs" / "bench", REPO / "scripts")
    stale, pending = stale_files(files, renderer, write=False)
    assert stale == [], "run: python scripts/bench_report.py"
    assert pending == [], "every table's results are committed in docs/bench"
    blocks = [block for path in files for block in find_blocks(path.read_text())]
    shown = {name for block in blocks for name in block.names}
    committed = {path.stem for path in (REPO / "docs" / "bench").glob("*.json")}
    assert committed <= shown, f"results no table shows: {sorted(committed - shown)}"
    assert all(re.fullmatch(r"[\w.-]+", name) for name in shown)
