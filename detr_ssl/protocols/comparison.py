"""The plan of a pretext comparison: which pretraining runs, then which fine-tunes, in which order.

Every method pretrains the same detector (or its backbone) on the same unlabeled images and is fine-tuned
through the same label-fraction protocol (the folds and schedule of ``scripts/semisup.py``), beside the two
baselines every paper reports: random initialisation and a backbone-only initialisation. The backbone-only
baseline is the *chain backbone* (default SwAV): the backbone pretext whose export also starts every
detector pretext, through the flags each detector pretext declares (``PretextTask.backbone_flags``: DetReg's
teacher and backbone, UP-DETR's and Pair DETR's backbone), as DetReg's paper starts from a SwAV ResNet.

The plan is a numbered list of stages, pretraining first (the chain backbone before everything that builds
on it), then every fine-tune (fraction, seed, method). Each stage is an ordinary run in its own folder, so
a stage can run anywhere (one after the other here, or as one job each on a cluster) once the stages it
needs have finished. Tasks come from the registry: a task module added to ``detr_ssl.tasks`` is in the
plan without editing anything here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from detr_ssl.config import PRETRAINED_FILE
from detr_ssl.errors import ConfigError
from detr_ssl.protocols.label_fractions import format_percent, fraction_run_name
from detr_ssl.tasks import all_tasks
from detr_ssl.tasks.options.backbone import SWAV_LAYOUT_FILE, BackboneOptions

__all__ = ["RANDOM", "FinetuneStage", "Method", "Plan", "PretrainStage", "build_plan", "comparison_methods"]

RANDOM = "random"
"""Name of the random-initialisation baseline (the reference of every paired difference)."""

InitKind = Literal["random", "backbone", "pretrained"]


def backbone_baseline_name(chain: str) -> str:
    """The backbone-only baseline's name, e.g. ``backbone-swav``."""
    return f"backbone-{chain}"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: where its fine-tunes start."""

    name: str
    init: InitKind
    """``random``; ``backbone``: the task's ``SWAV_LAYOUT_FILE`` as ``--backbone-init``; ``pretrained``: its
    ``pretrained.pth`` as ``--pretrained`` (a detector pretext's detector, or a backbone pretext's trunk and
    the pyramid levels it trained)."""
    task: str | None = None
    """The pretext task whose export it starts from."""


@dataclass(frozen=True)
class PretrainStage:
    """One pretraining run."""

    task: str
    builds_on: str | None = None
    """The chain backbone whose export this run starts from (its ``backbone_flags``), or None."""

    @property
    def label(self) -> str:
        return f"pretrain {self.task}" + (f" (on {self.builds_on})" if self.builds_on else "")

    def output_dir(self, root: Path) -> Path:
        return Path(root) / "pretrain" / self.task


@dataclass(frozen=True)
class FinetuneStage:
    """One fine-tuning run: ``method`` on the (``fraction``, ``seed``) fold."""

    method: Method
    fraction: float
    seed: int

    @property
    def label(self) -> str:
        return f"finetune {self.method.name}, {format_percent(self.fraction)}% labels, seed {self.seed}"

    @property
    def run_name(self) -> str:
        """The run's folder under the fine-tuning root (the semisup driver runs it there)."""
        return fraction_run_name(self.fraction, self.method.name, self.seed)


Stage = PretrainStage | FinetuneStage


@dataclass(frozen=True)
class Plan:
    """The stages in the order they run (stage ``k`` is ``stages[k - 1]``), and the methods compared."""

    stages: tuple[Stage, ...]
    methods: tuple[Method, ...]
    chain: str | None

    @property
    def pretraining(self) -> tuple[PretrainStage, ...]:
        return tuple(stage for stage in self.stages if isinstance(stage, PretrainStage))

    @property
    def finetuning(self) -> tuple[FinetuneStage, ...]:
        return tuple(stage for stage in self.stages if isinstance(stage, FinetuneStage))

    def stage(self, number: int) -> Stage:
        """Stage ``number`` (1-based); a `ConfigError` naming the valid range otherwise."""
        if not 1 <= number <= len(self.stages):
            raise ConfigError(f"--stage {number}: the plan has stages 1 to {len(self.stages)} (see --dry-run)")
        return self.stages[number - 1]

    def needs(self, stage: Stage) -> list[PretrainStage]:
        """The pretraining stages that must have finished before ``stage`` can run."""
        task = stage.builds_on if isinstance(stage, PretrainStage) else stage.method.task
        return [pretrain for pretrain in self.pretraining if pretrain.task == task]

    def needed_numbers(self, stage: Stage) -> list[int]:
        """The stage numbers of :meth:`needs`."""
        return [self.stages.index(need) + 1 for need in self.needs(stage)]


def comparison_methods(tasks: Sequence[str], chain: str | None) -> list[Method]:
    """Random init, the backbone-only baseline (the chain backbone, if any), then every task in ``tasks``
    other than the chain backbone (whose export *is* the backbone baseline)."""
    methods = [Method(RANDOM, "random")]
    if chain is not None:
        methods.append(Method(backbone_baseline_name(chain), "backbone", chain))
    methods += [Method(task, "pretrained", task) for task in tasks if task != chain]
    return methods


def _check_tasks(tasks: Sequence[str], chain: str | None) -> None:
    registered = all_tasks()
    unknown = sorted(set(tasks) - set(registered) | ({chain} - set(registered) if chain else set()))
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; registered: {', '.join(sorted(registered))}")
    backbone_pretexts = sorted(name for name, task in registered.items() if issubclass(task, BackboneOptions))
    if chain is not None and chain not in backbone_pretexts:
        raise ConfigError(f"--chain-backbone {chain} is not a backbone pretext (one of {', '.join(backbone_pretexts)})")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"--tasks names a task twice: {' '.join(tasks)}")


def build_plan(tasks: Sequence[str], chain: str | None, fractions: Sequence[float], seeds: Sequence[int]) -> Plan:
    """The comparison of ``tasks`` (default order: as given) with ``chain`` as the backbone baseline and the
    start of the detector pretexts: the chain backbone's pretraining, then every other task's (a detector
    pretext builds on the chain backbone), then per fraction and seed one fine-tune of every method."""
    _check_tasks(tasks, chain)
    if not fractions or not seeds:
        raise ConfigError("the comparison needs at least one --fractions value and one --seeds value")
    registered = all_tasks()
    pretraining = [PretrainStage(chain)] if chain is not None else []
    for task in tasks:
        if task == chain:
            continue
        detector_pretext = not issubclass(registered[task], BackboneOptions)
        pretraining.append(PretrainStage(task, chain if detector_pretext else None))
    methods = comparison_methods(tasks, chain)
    finetuning = [FinetuneStage(method, fraction, seed) for fraction in fractions for seed in seeds
                  for method in methods]
    return Plan(tuple(pretraining) + tuple(finetuning), tuple(methods), chain)


def chain_argv(task: str, builds_on_dir: Path | None) -> list[str]:
    """The flags that start ``task`` from the chain backbone's export in ``builds_on_dir`` (none without)."""
    if builds_on_dir is None:
        return []
    layout = str(Path(builds_on_dir) / SWAV_LAYOUT_FILE)
    return [part for flag in all_tasks()[task].backbone_flags for part in (flag, layout)]


def init_paths(method: Method, pretrain_root: Path) -> tuple[Path | None, Path | None]:
    """``(pretrained, backbone)`` files a fine-tune of ``method`` starts from."""
    if method.init == "random" or method.task is None:
        return None, None
    folder = Path(pretrain_root) / method.task
    return (folder / PRETRAINED_FILE, None) if method.init == "pretrained" else (None, folder / SWAV_LAYOUT_FILE)
