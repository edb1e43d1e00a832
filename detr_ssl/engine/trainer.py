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
from accelerate.utils import gather_object
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from detr_ssl.config import OptimConfig, RunConfig
from detr_ssl.datasets.collate import collate_detection
from detr_ssl.distributed import all_reduce_sum
from detr_ssl.engine.checkpoint import load_training_checkpoint, resolve_resume, save_training_checkpoint
from detr_ssl.engine.data import SeededAugmentation, training_loader
from detr_ssl.engine.logging import ScalarLogger, progress_bars_off
from detr_ssl.engine.optim import build_optimizer, build_scheduler
from detr_ssl.engine.rng import rng_state, set_rng_state
from detr_ssl.errors import NonFiniteError
from detr_ssl.losses.output import LossOutput
from detr_ssl.tasks.base import Task

Evaluate = Callable[[nn.Module], dict[str, float]]


class NonFiniteLossError(NonFiniteError):
    """The loss became NaN or infinite; the message names the step and the offending terms."""


#: A run whose loss is non-finite this many batches in a row is stopped even with ``--on-nonfinite skip``:
#: it has stopped learning, and skipping on would only hide that.
MAX_CONSECUTIVE_SKIPS = 20


@dataclass
class TrainingProgress:
    """How far a training run got (epochs, optimizer steps, batches); restored from the checkpoint on resume."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    """Optimizer steps completed."""
    batch_in_epoch: int = 0
    """Batches of the current epoch already consumed (non-zero only for a run stopped mid-epoch)."""


def _describe_nonfinite(loss: LossOutput) -> str:
    bad = {name: float(value) for name, value in loss.terms.items() if not torch.isfinite(value)}
    return f"loss {float(loss.total.detach())}, non-finite terms: {bad or 'none (the sum overflowed)'}"


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
        self.progress = TrainingProgress()
        self.skipped_batches = 0
        """Batches skipped for a non-finite loss in this process's lifetime (logged as train/skipped_batches)."""
        self.consecutive_skips = 0
        self.output_dir = Path(run.output_dir)
        loader = training_loader(train_dataset, optim.batch_size, run.seed, num_workers, collate_fn)
        self.train_set: SeededAugmentation = loader.dataset
        optimizer = build_optimizer(model, optim)
        # The schedule is stepped per epoch, once per process: it is deliberately not prepared, since
        # Accelerate would step a prepared scheduler once per process per call.
        self.scheduler = build_scheduler(optimizer, optim)
        if run.compile:
            # In place (nn.Module.compile), not torch.compile(model): no wrapper module, so parameter names,
            # checkpoints and every task's access to the model's attributes stay those of the plain model.
            model.compile()
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
            # Processes draw different amounts of randomness (dropout on differently padded batches), so
            # each one's generators are kept: an exact resume restores every process's own state.
            "rng_per_process": gather_object([rng_state()]),
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
        self.progress = TrainingProgress(state["epoch"], state["step"], state.get("batch_in_epoch", 0))
        per_process = state.get("rng_per_process")
        if isinstance(per_process, list) and len(per_process) == self.accelerator.num_processes:
            set_rng_state(per_process[self.accelerator.process_index])
        elif "rng" in state:  # an older checkpoint, or another process count: the main process's state
            set_rng_state(state["rng"])
        self.accelerator.print(f"resumed from {path} at epoch {self.progress.epoch}, step {self.progress.step}")

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float] | None:
        """Trains until ``optim.epochs`` (or ``run.max_steps``, where the run is evaluated before it stops);
        returns the last evaluation's metrics, or None when none ran (no ``evaluate``, or nothing left to
        train)."""
        try:
            while self.progress.epoch < self.optim_cfg.epochs:
                finished_epoch = self._train_epoch()
                if not finished_epoch:
                    if self.evaluate_fn is not None:
                        self._evaluate()
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
                  disable=progress_bars_off(self.accelerator.is_local_main_process), dynamic_ncols=True) as bar:
            for batch in bar:
                with self.accelerator.accumulate(self.model):
                    loss = self._loss_or_skip(batch)
                    if loss is None:
                        self.optimizer.zero_grad()
                        self.progress.batch_in_epoch += 1
                        continue
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

    def _loss_or_skip(self, batch: Any) -> LossOutput | None:
        """The batch's loss; None when it is non-finite on any process and ``run.on_nonfinite`` is
        'skip'. Every process learns whether any of them saw a NaN/inf, so all of them skip the same
        batch (or all stop) and none is left waiting in a gradient all-reduce."""
        where = f"epoch {self.progress.epoch}, step {self.progress.step + 1}"
        try:
            loss = self.task.compute_loss(self.model, batch)
            problem = None if torch.isfinite(loss.total) else _describe_nonfinite(loss)
        except NonFiniteError as exc:  # NaN/inf predictions caught by the matcher, before any loss exists
            problem = str(exc)
        bad_processes = int(all_reduce_sum(torch.tensor([float(problem is not None)], device=self.accelerator.device)))
        if bad_processes == 0:
            self.consecutive_skips = 0
            return loss
        problem = problem or "the loss was non-finite on another process"
        if self.run.on_nonfinite == "stop":
            raise NonFiniteLossError(f"non-finite loss at {where}: {problem} (--on-nonfinite skip skips such batches)")
        self.skipped_batches += 1
        self.consecutive_skips += 1
        self.accelerator.print(f"skipped batch at {where}: {problem}")
        if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            raise NonFiniteLossError(f"non-finite loss {self.consecutive_skips} batches in a row, up to {where}: "
                                     f"{problem}; stopping instead of skipping on")
        return None

    def _log_step(self, loss, grad_norm: torch.Tensor | None) -> None:
        scalars = {"train/loss": float(self.accelerator.reduce(loss.total.detach(), "mean"))}
        scalars.update({f"train/{k}": float(v) for k, v in loss.terms.items()})
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        if self.run.on_nonfinite == "skip":
            scalars["train/skipped_batches"] = self.skipped_batches
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
