"""Start-up: every script's ``--help`` (and ``pretrain.py --task T --help`` for every task) answers without
importing torch or the other heavy libraries, which the command-line modules import only where a job runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "transformers", "cv2", "matplotlib", "accelerate", "scipy", "timm")

# Runs each (script, flags) with --help in this one interpreter, as `python script ... --help` would, and
# reports what it printed and which heavy modules had been imported by then.
PROBE = """
import contextlib, io, json, runpy, sys

heavy, runs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = []
for script, flags in runs:
    sys.argv = [script, *flags, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
            status = None
        except SystemExit as stop:
            status = stop.code
    results.append({"run": " ".join(sys.argv), "status": status, "help": out.getvalue(),
                    "heavy": [name for name in heavy if name in sys.modules]})
print(json.dumps(results))
"""


def registered_tasks() -> list[str]:
    """The names of the ``@register_task("<name>")`` lines in detr_ssl/tasks (read, not imported: importing
    every task would take longer than the test)."""
    sources = (path.read_text() for path in sorted((REPO / "detr_ssl" / "tasks").glob("*.py")))
    return [name for source in sources for name in re.findall(r'^@register_task\("(\w+)"\)', source, re.MULTILINE)]


def help_runs() -> list[tuple[str, list[str]]]:
    """Every script but the benchmarks (found by name, so a new script is covered), then pretrain.py once
    per registered task."""
    scripts = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "scripts").glob("*.py")
                     if not path.name.startswith("bench_"))
    tasks = registered_tasks()
    assert {"detreg", "updetr", "swav"} <= set(tasks) and len(scripts) > 5  # both searches found their files
    return [(script, []) for script in scripts] + [("scripts/pretrain.py", ["--task", task]) for task in tasks]


def test_every_script_answers_help_without_importing_torch() -> None:
    runs = help_runs()
    probe = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(runs)], cwd=REPO,
                           capture_output=True, text=True, timeout=300, check=False)
    assert probe.returncode == 0, probe.stderr
    results = json.loads(probe.stdout)
    assert len(results) == len(runs)
    for result in results:
        assert result["status"] == 0, f"{result['run']}: exit status {result['status']}"
        assert "usage:" in result["help"] and "--help" in result["help"], f"{result['run']} printed no help"
        # Modules stay imported, so the first run listed here is the one that imported them.
        assert not result["heavy"], f"{result['run']} imports {', '.join(result['heavy'])}"
