"""Numerical guards: a NaN/inf loss stops the run naming the step and terms, or is skipped on request."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import Tensor, nn

from detr_ssl.config import OptimConfig, RunConfig
from detr_ssl.engine.trainer import MAX_CONSECUTIVE_SKIPS, NonFiniteLossError, Trainer
from detr_ssl.errors import NonFiniteError
from detr_ssl.losses.output import LossOutput
from toy_training import Numbers


class PoisonedTask:
    """Squared error of a linear model; batches holding a poisoned sample give NaN (or raise like the matcher)."""

    def __init__(self, poisoned: set[int], raise_instead: bool = False) -> None:
        self.poisoned = poisoned
        self.raise_instead = raise_instead

    def compute_loss(self, model: nn.Module, batch: Tensor) -> LossOutput:
        fit = ((model(batch) - 2 * batch) ** 2).mean()
        if self.poisoned & {int(v) for v in batch.flatten()}:
            if self.raise_instead:
                raise NonFiniteError("non-finite matching cost: the predicted logits or boxes contain NaN or inf")
            fit = fit * float("nan")
        return LossOutput(fit, {"loss_fit": fit.detach()})


def _train(tmp_path: Path, poisoned: set[int], on_nonfinite: str, raise_instead: bool = False,
           samples: int = 8) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    run = RunConfig(output_dir=tmp_path, log_every=1, checkpoint_every=100, on_nonfinite=on_nonfinite)
    optim = OptimConfig(epochs=2, lr=0.05, lr_backbone=0.0, batch_size=1, lr_drop=100)
    trainer = Trainer(Accelerator(cpu=True), model, PoisonedTask(poisoned, raise_instead), Numbers(samples), optim,
                      run, collate_fn=torch.stack)
    trainer.fit()
    return trainer


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_term(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"step \d+: loss nan, non-finite terms: \{'loss_fit': nan\}"):
        _train(tmp_path, {3}, "stop")


def test_skip_leaves_the_poisoned_batches_out_and_counts_them(tmp_path: Path) -> None:
    trainer = _train(tmp_path, {3}, "skip")
    assert trainer.skipped_batches == 2  # once per epoch
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with (tmp_path / "scalars.csv").open() as handle:
        counts = [float(r["value"]) for r in csv.DictReader(handle) if r["tag"] == "train/skipped_batches"]
    assert counts[-1] == 2
    assert trainer.progress.step == 14  # 16 batches, 2 skipped: no optimizer step for them


def test_nan_predictions_caught_by_the_matcher_are_skipped_too(tmp_path: Path) -> None:
    trainer = _train(tmp_path, {5}, "skip", raise_instead=True)
    assert trainer.skipped_batches == 2
    with pytest.raises(NonFiniteLossError, match="non-finite matching cost"):
        _train(tmp_path / "stop", {5}, "stop", raise_instead=True)


def test_a_run_that_only_produces_nan_stops_even_when_skipping(tmp_path: Path) -> None:
    samples = MAX_CONSECUTIVE_SKIPS + 5
    with pytest.raises(NonFiniteLossError, match=f"{MAX_CONSECUTIVE_SKIPS} batches in a row"):
        _train(tmp_path, set(range(samples)), "skip", samples=samples)
