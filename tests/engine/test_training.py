"""End-to-end training on CPU: the tiny detector learns, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.cli.finetune import finetune
from detr_ssl.engine.checkpoint import load_training_checkpoint


def _losses(output_dir: Path) -> list[float]:
    with (output_dir / "scalars.csv").open() as handle:
        return [float(row["value"]) for row in csv.DictReader(handle) if row["tag"] == "train/loss"]


@pytest.mark.parametrize("architecture", ["deformable_detr", "pairdetr"])
def test_tiny_model_overfits_a_few_demo_images(small_run, architecture: str) -> None:
    cfg = replace(small_run(4, eval_every=1000, checkpoint_every=1000), architecture=architecture)
    # No augmentation: the same four images every step, one batch per epoch.
    cfg = replace(cfg, data=replace(cfg.data, train_scales=(128,), crop=None),
                  optim=replace(cfg.optim, epochs=60, lr=1e-3, lr_backbone=1e-3, lr_drop=1000))
    metrics = finetune(cfg)
    losses = _losses(cfg.run.output_dir)
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last <= 0.5 * first, (first, last)
    assert metrics["AP50"] >= 0.5, metrics
    assert (cfg.run.output_dir / "metrics.json").is_file()


def test_resume_reproduces_the_uninterrupted_run(small_run, tmp_path: Path) -> None:
    cfg = small_run(6, eval_every=1000, checkpoint_every=1)
    # Dropout and crop augmentation on, batch 2: 3 steps per epoch, so step 4 stops mid-epoch.
    cfg = replace(cfg, model=replace(cfg.model, dropout=0.1), optim=replace(cfg.optim, epochs=2, batch_size=2))
    straight = replace(cfg, run=replace(cfg.run, output_dir=tmp_path / "straight"))
    finetune(straight)

    interrupted = replace(cfg, run=replace(cfg.run, output_dir=tmp_path / "resumed", max_steps=4))
    finetune(interrupted)
    stopped = load_training_checkpoint(tmp_path / "resumed" / "checkpoint.pth")
    assert (stopped["step"], stopped["epoch"], stopped["batch_in_epoch"]) == (4, 1, 1)
    finetune(replace(interrupted, run=replace(interrupted.run, max_steps=None, resume="auto")))

    expected = load_training_checkpoint(tmp_path / "straight" / "checkpoint.pth")
    resumed = load_training_checkpoint(tmp_path / "resumed" / "checkpoint.pth")
    assert resumed["step"] == expected["step"] == 6
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")
