"""Fixtures of the pretext-task tests: each backbone pretext's short run (tests/tasks/pretext_runs.py) made
once per session and shared by every test that checks it, whichever asks first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretext_runs import PretextRun, ShortRun, short_run_config
from runs import copy_photos

from detr_ssl.cli.pretrain import pretrain


@pytest.fixture(scope="session")
def eight_photos(tmp_path_factory: pytest.TempPathFactory, demo_photos: Path) -> Path:
    """A folder of the first 8 demo photos."""
    return copy_photos(demo_photos, tmp_path_factory.mktemp("photos"), 8)


@pytest.fixture(scope="session")
def short_pretext_run(eight_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> ShortRun:
    """``short_pretext_run(task)``: the short run of ``task`` (`short_run_config`), trained on first use with
    one intra-op thread (two competing threads on the shared 2-core test machine run slower)."""
    finished: dict[str, PretextRun] = {}

    def run(task: str) -> PretextRun:
        if task not in finished:
            cfg = short_run_config(task, eight_photos, tmp_path_factory.mktemp(f"{task}_run"))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                exported = pretrain(cfg)
            finally:
                torch.set_num_threads(threads)
            finished[task] = PretextRun(task, cfg, cfg.run.output_dir, exported)
        return finished[task]

    return run
