"""``--compile``: the compiled model trains like the eager one, and its checkpoints are the plain model's."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed

from detr_ssl.cli.common import make_accelerator
from detr_ssl.config import LossConfig, OptimConfig, PairConfig, RunConfig
from detr_ssl.datasets import CocoDetection, make_train_transforms
from detr_ssl.datasets.demo import DemoPaths
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.engine.trainer import Trainer
from detr_ssl.models.config import model_preset
from detr_ssl.tasks.supervised import build_supervised

# One encoder and one decoder layer, 64 x 64 images: the least Inductor has to compile.
MODEL = model_preset("tiny", enc_layers=1, dec_layers=1)
IMAGE_SIZE = 64


def _train(run: RunConfig, data: tuple[Path, Path]) -> Trainer:
    """A Trainer fitted on the demo subset (no evaluation), as scripts/finetune.py builds one."""
    accelerator = make_accelerator(run)
    set_seed(run.seed)
    dataset = CocoDetection(*data, make_train_transforms((IMAGE_SIZE,), IMAGE_SIZE, None))
    model, task = build_supervised("deformable_detr", MODEL, dataset.num_classes, LossConfig(), PairConfig())
    trainer = Trainer(accelerator, model, task, dataset, OptimConfig(batch_size=2), run)
    trainer.fit()
    return trainer


def _losses(output_dir: Path) -> list[float]:
    with (output_dir / "scalars.csv").open() as handle:
        return [float(row["value"]) for row in csv.DictReader(handle) if row["tag"] == "train/loss"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_checkpoints_plain_names(demo_data: DemoPaths, demo_subset,
                                                                     tmp_path: Path) -> None:
    data = (demo_subset(4), demo_data.image_dir)
    run = RunConfig(max_steps=1, log_every=1)
    _train(replace(run, output_dir=tmp_path / "eager"), data)
    compiled = _train(replace(run, output_dir=tmp_path / "compiled", compile=True), data)

    # Inductor fuses and reorders floating-point work, so equal up to rounding, not bit for bit.
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)
    eager_state = load_training_checkpoint(tmp_path / "eager" / "checkpoint.pth")["model"]
    compiled_state = load_training_checkpoint(tmp_path / "compiled" / "checkpoint.pth")["model"]
    assert compiled_state.keys() == eager_state.keys()
    assert not any("_orig_mod" in key for key in compiled_state)
    assert compiled.model.state_dict().keys() == eager_state.keys()

    # Resuming a compiled run, compiled again or eager, loads the checkpoint strictly and trains on.
    for name, compile_again in (("compiled", True), ("eager", False)):
        resumed = _train(replace(run, output_dir=tmp_path / "compiled", resume="auto", max_steps=2,
                                 compile=compile_again), data)
        assert resumed.progress.step == 2, name
        assert all(torch.isfinite(torch.tensor(_losses(tmp_path / "compiled"))))
