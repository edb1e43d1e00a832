"""The training loop: Accelerate handles devices, processes, mixed precision and accumulation;
the loop knows tasks only through :class:`detr_ssl.tasks.base.Task`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from detr_ssl.config import OptimConfig, RunConfig
from detr_ssl.datasets.collate import collate_detection
from detr_ssl.engine.checkpoint import load_training_checkpoint, resolve_resume, save_training_checkpoint
from detr_ssl.engine.data import SeededAugmentation
from detr_ssl.engine.logging import ScalarLogger
from detr_ssl.engine.optim import build_optimizer, build_scheduler
from detr_ssl.engine.rng import rng_state, set_rng_state
from detr_ssl.errors import DetrSslError
from detr_ssl.tasks.base import Task

Evaluate = Callable[[nn.Module], dict[str, float]]


class NonFiniteLossError(DetrSslError):
    """The loss became NaN or infinite; the message names the step and the offending terms."""


@dataclass
class Progress:
    """How far a run got; restored from the checkpoint on resume."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    """Optimizer steps completed."""
    batch_in_epoch: int = 0
    """Batches of the current epoch already consumed (non-zero only for a run stopped mid-epoch)."""


class Trainer:
    """Trains ``model`` with ``task`` on ``train_dataset``; evaluates and checkpoints on schedule.

    Args:
        accelerator: the run's Accelerator (see :func:`make_accelerator`).
        model: the unwrapped model.
        task: owns the loss.
        train_dataset: yields (image, target) samples; augmentation is re-seeded per sample.
        optim, run: configuration.
        evaluate: called on every process with the prepared model; returns metrics (valid on main).
        checkpoint_extra: saved into every checkpoint as-is (config, class ids, ...).
        collate_fn: batches samples for the task (padded detection batches by default; a task with
            another sample layout, such as multi-crop views, brings its own).
    """

    def __init__(self, accelerator: Accelerator, model: nn.Module, task: Task, train_dataset: Dataset,
                 optim: OptimConfig, run: RunConfig, num_workers: int = 0, evaluate: Evaluate | None = None,
                 checkpoint_extra: dict[str, Any] | None = None,
                 collate_fn: Callable[[list[Any]], Any] = collate_detection) -> None:
        self.accelerator = accelerator
        self.task = task
        self.optim_cfg = optim
        self.run = run
        self.evaluate_fn = evaluate
        self.checkpoint_extra = checkpoint_extra or {}
        self.progress = Progress()
        self.output_dir = Path(run.output_dir)
        self.train_set = SeededAugmentation(train_dataset, run.seed)
        # A private generator: creating an iterator draws a worker seed from it, and drawing from the
        # global generator instead would shift dropout after a mid-epoch resume.
        loader = DataLoader(self.train_set, batch_size=optim.batch_size, shuffle=True, num_workers=num_workers,
                            collate_fn=collate_fn, drop_last=False,
                            generator=torch.Generator().manual_seed(run.seed))
        optimizer = build_optimizer(model, optim)
        # The schedule is stepped per epoch, once per process: it is deliberately not prepared, since
        # Accelerate would step a prepared scheduler once per process per call.
        self.scheduler = build_scheduler(optimizer, optim)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        self.logger = ScalarLogger(self.output_dir, accelerator.is_main_process, run.tensorboard)
        self.metrics: dict[str, float] | None = None
        """The last evaluation's metrics (an empty dict on non-main processes); None until one ran."""
        resume_path = resolve_resume(run.resume, self.output_dir)
        if resume_path is not None:
            self._load(resume_path)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.accelerator.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            **asdict(self.progress),
            "rng": rng_state(),
            **self.checkpoint_extra,
        }

    def _save(self) -> None:
        state = self.state_dict()  # every process takes part (unwrap/optimizer state are collective-safe)
        if self.accelerator.is_main_process:
            save_training_checkpoint(state, self.output_dir, self.progress.epoch, self.run.keep_last)
        self.accelerator.wait_for_everyone()

    def _load(self, path: Path) -> None:
        state = load_training_checkpoint(path)
        self.accelerator.unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["lr_scheduler"])
        self.progress = Progress(state["epoch"], state["step"], state.get("batch_in_epoch", 0))
        if "rng" in state:
            set_rng_state(state["rng"])
        self.accelerator.print(f"resumed from {path} at epoch {self.progress.epoch}, step {self.progress.step}")

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float] | None:
        """Trains until ``optim.epochs`` (or ``run.max_steps``); returns the last evaluation's metrics, or
        None when none ran (stopped by ``max_steps`` first, or no ``evaluate``)."""
        try:
            while self.progress.epoch < self.optim_cfg.epochs:
                finished_epoch = self._train_epoch()
                if not finished_epoch:
                    self._save()
                    break
                self.progress.epoch += 1
                self.progress.batch_in_epoch = 0
                self.scheduler.step()
                last = self.progress.epoch == self.optim_cfg.epochs
                if self.evaluate_fn is not None and (last or self.progress.epoch % self.run.eval_every == 0):
                    self._evaluate()
                if last or self.progress.epoch % self.run.checkpoint_every == 0:
                    self._save()
        finally:
            self.logger.close()
        return self.metrics

    def _reached_max_steps(self) -> bool:
        return self.run.max_steps is not None and self.progress.step >= self.run.max_steps

    def _train_epoch(self) -> bool:
        """One epoch (or its remainder after a resume). False when stopped early by ``max_steps``."""
        if self._reached_max_steps():
            return False
        epoch = self.progress.epoch
        self.train_set.set_epoch(epoch)
        self.loader.set_epoch(epoch)
        loader = self.loader
        if self.progress.batch_in_epoch:
            loader = self.accelerator.skip_first_batches(self.loader, self.progress.batch_in_epoch)
        self.model.train()
        with tqdm(loader, desc=f"epoch {epoch + 1}/{self.optim_cfg.epochs}", leave=False,
                  disable=not self.accelerator.is_local_main_process, dynamic_ncols=True) as bar:
            for batch in bar:
                with self.accelerator.accumulate(self.model):
                    loss = self.task.compute_loss(self.model, batch)
                    self._check_finite(loss.total, loss.terms)
                    self.accelerator.backward(loss.total)
                    grad_norm = None
                    if self.accelerator.sync_gradients:
                        max_norm = self.optim_cfg.clip_max_norm if self.optim_cfg.clip_max_norm > 0 else math.inf
                        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                self.progress.batch_in_epoch += 1
                if not self.accelerator.sync_gradients:
                    continue
                self.progress.step += 1
                bar.set_postfix(loss=f"{loss.total.item():.4f}")
                if self.progress.step % self.run.log_every == 0:
                    self._log_step(loss, grad_norm)
                if self._reached_max_steps():
                    return False
        return True

    def _check_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        if torch.isfinite(total):
            return
        bad = {k: float(v) for k, v in terms.items() if not torch.isfinite(v)}
        raise NonFiniteLossError(
            f"non-finite loss {float(total)} at epoch {self.progress.epoch}, step {self.progress.step + 1}; "
            f"non-finite terms: {bad or 'none (the sum overflowed)'}"
        )

    def _log_step(self, loss, grad_norm: torch.Tensor | None) -> None:
        scalars = {"train/loss": float(self.accelerator.reduce(loss.total.detach(), "mean"))}
        scalars.update({f"train/{k}": float(v) for k, v in loss.terms.items()})
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        for group in self.optimizer.param_groups:
            scalars[f"lr/{group.get('name', 'group')}"] = group["lr"]
        scalars["epoch"] = self.progress.epoch
        self.logger.log(self.progress.step, scalars)

    def _evaluate(self) -> None:
        assert self.evaluate_fn is not None
        self.metrics = self.evaluate_fn(self.model)
        if self.accelerator.is_main_process:
            self.logger.log(self.progress.step, {f"val/{k}": v for k, v in self.metrics.items()})
            summary = {"epoch": self.progress.epoch, "step": self.progress.step, **self.metrics}
            self.accelerator.print("eval " + json.dumps({k: round(v, 4) for k, v in summary.items()}))
