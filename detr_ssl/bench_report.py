"""The README's benchmark tables, rendered from the committed results in ``docs/bench/*.json``; no torch.

A block in a markdown file is the text between a marker line and ``<!-- /bench -->``:

- ``<!-- bench:table NAME -->``: the table of ``docs/bench/NAME.json``, as the script that wrote it renders
  it, with a line saying how, where and when it was measured;
- ``<!-- bench:summary NAME NAME ... -->``: one row per result file: the command, the peer, the target and
  what was reached.

The JSON's ``bench`` field names the script, ``scripts/bench_<bench>.py``, which renders its own results
(so the README shows the table the script prints): ``readme_table(payload) -> str`` and
``readme_summary(payload) -> (peer, target, reached)``, where ``payload`` is the whole file
(:meth:`detr_ssl.bench_cli.BenchRun.payload`). The scripts import no torch at module level, so rendering
is quick.

A block whose result files are not all committed yet is *pending*: its text is kept as it is (and listed),
so the tables can move to results one at a time. :func:`regenerate` rewrites every block that has its
files; the ``--check`` of ``scripts/bench_report.py`` fails when that would change a file, so the README
and the committed results cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from detr_ssl.bench_cli import markdown_table, percent
from detr_ssl.errors import ConfigError

BLOCK = re.compile(r"^<!-- bench:(?P<kind>table|summary) (?P<names>[\w. -]+?) -->\n(?P<body>.*?)^<!-- /bench -->$",
                   re.DOTALL | re.MULTILINE)
SUMMARY_HEADERS = ("benchmark", "ours vs", "target", "reached")


@dataclass(frozen=True)
class Block:
    """One marked block of a markdown file: its kind, the result files it shows, its current text."""

    kind: str
    names: tuple[str, ...]
    body: str


def find_blocks(text: str) -> list[Block]:
    """Every marked block of ``text``; a marker without its end, or an unknown kind, is an error."""
    blocks = [Block(m["kind"], tuple(m["names"].split()), m["body"]) for m in BLOCK.finditer(text)]
    opened = len(re.findall(r"^<!-- bench:", text, re.MULTILINE))
    if opened != len(blocks) or text.count("<!-- /bench -->") != len(blocks):
        raise ConfigError(f"{opened} bench markers but {len(blocks)} well-formed blocks: each "
                          "'<!-- bench:table|summary NAME... -->' line needs a '<!-- /bench -->' line after it")
    return blocks


class Renderer:
    """Renders blocks from the result files in ``bench_dir`` with the scripts in ``scripts_dir``."""

    def __init__(self, bench_dir: Path, scripts_dir: Path) -> None:
        self.bench_dir = bench_dir
        self.scripts_dir = scripts_dir
        self._modules: dict[str, ModuleType] = {}

    def missing(self, block: Block) -> list[Path]:
        """The result files ``block`` needs that are not there."""
        return [path for path in map(self.path, block.names) if not path.is_file()]

    def path(self, name: str) -> Path:
        return self.bench_dir / f"{name}.json"

    def payload(self, name: str) -> dict[str, Any]:
        return json.loads(self.path(name).read_text(encoding="utf-8"))

    def script(self, bench: str) -> ModuleType:
        """``scripts/bench_<bench>.py`` as a module (its ``main`` is not run)."""
        if bench not in self._modules:
            path = self.scripts_dir / f"bench_{bench}.py"
            if not path.is_file():
                raise ConfigError(f"no script {path} for the results of bench {bench!r}")
            spec = importlib.util.spec_from_file_location(f"bench_{bench}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up while being defined
            spec.loader.exec_module(module)
            self._modules[bench] = module
        return self._modules[bench]

    def renderer(self, payload: dict[str, Any], function: str) -> Any:
        module = self.script(payload["bench"])
        if not hasattr(module, function):
            raise ConfigError(f"{module.__file__} has no {function}(payload) to render its results with")
        return getattr(module, function)

    def render(self, block: Block) -> str:
        """The text ``block`` should hold (every file it needs must be there)."""
        payloads = [self.payload(name) for name in block.names]
        if block.kind == "table":
            return "\n\n".join(self.renderer(p, "readme_table")(p) + "\n\n" + provenance(p) for p in payloads) + "\n"
        rows = [[f"`{display_command(p['command'])}`", *self.renderer(p, "readme_summary")(p)] for p in payloads]
        machines = "; ".join(sorted({machine_line(p) for p in payloads}))
        loads = [p["background_load"]["whole run"] for p in payloads]
        load = percent(None if None in loads else max(loads))
        return markdown_table(SUMMARY_HEADERS, rows) + f"\n\nMeasured on {machines}; background load at most {load}.\n"


def display_command(command: str) -> str:
    """``python scripts/bench_x.py ... --output F`` as a reader types it without the output file."""
    words = shlex.split(command)
    if "--output" in words:
        index = words.index("--output")
        del words[index:index + 2]
    return shlex.join(words)


def machine_line(payload: dict[str, Any]) -> str:
    """``<cpu>, <n> cores, torch <v> on <t> threads``: what a result was measured on."""
    machine, versions = payload["machine"], payload["versions"]
    device = f" ({machine['gpu']})" if machine.get("gpu") else ""
    threads = machine["threads"]
    return (f"{machine['cpu']}{device}, {machine['usable_cores']} cores, torch {versions.get('torch')} on "
            f"{threads} thread{'' if threads == 1 else 's'}")


def provenance(payload: dict[str, Any]) -> str:
    """The line under a table: the command, the machine, the date and the background load."""
    return (f"`{display_command(payload['command'])}` on {machine_line(payload)}, {payload['date'][:10]}; "
            f"background load {percent(payload['background_load']['whole run'])} over the run.")


@dataclass
class Regenerated:
    """A file's text with every block that has its results rendered, and the blocks still pending."""

    text: str
    pending: list[str]


def regenerate(text: str, renderer: Renderer) -> Regenerated:
    """``text`` with each block whose result files exist rewritten from them; the others are kept."""
    find_blocks(text)  # malformed markers are an error, not silently left alone
    pending: list[str] = []

    def replace(match: re.Match[str]) -> str:
        block = Block(match["kind"], tuple(match["names"].split()), match["body"])
        missing = renderer.missing(block)
        if missing:
            files = ", ".join(os.path.relpath(path) for path in missing)
            pending.append(f"bench:{block.kind} {' '.join(block.names)} (no {files})")
            return match[0]
        head = match[0][:match.start("body") - match.start()]
        return head + renderer.render(block) + "<!-- /bench -->"

    return Regenerated(BLOCK.sub(replace, text), pending)


def stale_files(paths: Sequence[Path], renderer: Renderer, write: bool) -> tuple[list[Path], list[str]]:
    """The files among ``paths`` whose blocks differ from their results (rewritten when ``write``), and the
    pending blocks of all of them."""
    stale, pending = [], []
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path}: no such markdown file")
        text = path.read_text(encoding="utf-8")
        result = regenerate(text, renderer)
        pending += [f"{path}: {entry}" for entry in result.pending]
        if result.text != text:
            stale.append(path)
            if write:
                path.write_text(result.text, encoding="utf-8")
    return stale, pending
