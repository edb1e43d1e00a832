"""What the two benchmark drivers (few-shot COCO, label fractions) share."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from detr_ssl.cli import fewshot, semisup
from detr_ssl.cli.common import run_main


@pytest.mark.parametrize("main", [fewshot.main, semisup.main], ids=["fewshot", "semisup"])
def test_multi_process_launch_is_refused_before_any_work(main: Callable[[list[str]], int], monkeypatch,
                                                         capsys, tmp_path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = run_main(main, ["--demo", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "one process" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("main", [fewshot.main, semisup.main], ids=["fewshot", "semisup"])
def test_training_flags_have_the_help_of_finetune(main: Callable[[list[str]], int], monkeypatch, capsys) -> None:
    """--batch-size, --num-workers, ... are finetune's flags, documented once: in the finetune config."""
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in ("Images per process per step.", "Data-loading worker processes per training process.",
                 "Write a checkpoint every N epochs (and always after the last). (default: 10)",
                 "Stop after this many optimizer steps", "Force the CPU even when a GPU is present."):
        assert text in out, text
