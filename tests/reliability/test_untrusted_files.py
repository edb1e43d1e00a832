"""Every checkpoint a user hands a script is read with ``weights_only=True``: a pickle payload is refused
with one line naming the file, and its code never runs."""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from detr_ssl.cli import finetune, pretrain
from detr_ssl.cli.common import run_main

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this object calls ``os.mkdir(marker)``: the visible trace of code run by a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like a training checkpoint / state dict, with a payload among the tensors."""
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "optimizer": {}, "lr_scheduler": {}, "epoch": 1,
                "step": 1, "conv1.weight": torch.zeros(1), "hook": _Payload(marker)}, path)
    return path


_ENTRY_POINTS: dict[str, tuple[Callable[[list[str]], int], list[str]]] = {
    "finetune --pretrained": (finetune.main, ["--pretrained"]),
    "finetune --resume": (finetune.main, ["--resume"]),
    "finetune --backbone-init": (finetune.main, ["--backbone-init"]),
    "finetune --model.backbone-weights": (finetune.main, ["--model.backbone-weights"]),
    "pretrain --teacher-checkpoint": (pretrain.main, ["--task", "detreg", "--teacher-checkpoint"]),
    "pretrain --backbone-init": (pretrain.main, ["--task", "updetr", "--backbone-init"]),
    "pretrain --resume": (pretrain.main, ["--task", "updetr", "--resume"]),
}


@pytest.mark.parametrize("entry", list(_ENTRY_POINTS))
def test_a_pickle_payload_is_refused_with_one_line(
    entry: str, tmp_path: Path, demo_data, demo_photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main, flags = _ENTRY_POINTS[entry]
    marker = tmp_path / "payload_ran"
    evil = _evil_checkpoint(tmp_path / "evil.pth", marker)
    code = run_main(main, [*flags, str(evil), "--epochs", "1", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert str(evil) in err and "refused to load" in err
    assert not marker.exists(), "the checkpoint's code ran"


def _torch_load_calls(path: Path) -> list[ast.Call]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                calls.append(node)
    return calls


def test_every_torch_load_in_the_library_is_weights_only() -> None:
    sources = [p for folder in ("detr_ssl", "models", "datasets", "scripts") for p in (REPO / folder).rglob("*.py")]
    calls = {f"{path.relative_to(REPO)}:{call.lineno}": call for path in sources for call in _torch_load_calls(path)}
    assert calls, "expected at least the one torch.load in models/checkpoint_io.py"
    unsafe = [where for where, call in calls.items()
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in call.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
