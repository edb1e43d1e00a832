"""``scripts/fewshot_coco.py``: the few-shot COCO benchmark (TFA split, DetReg's two-stage protocol).

* Stage 1, base training: every training image, novel annotations removed (`base_training_set`), a detector
  with the base classes only, started from ``--pretrained`` (or ``--backbone-init``) when given.
* Stage 2, for every (K, seed): a seeded K-shot set over all classes (`sample_k_shot`; the chosen ids are
  recorded in the run folder's ``selection.json``), fine-tuned from the stage-1 weights. The class count
  changes (base -> all classes), so ``load_pretrained`` drops the stage-1 class head and the new one starts
  from its initialisation; everything else is carried over.
* Every stage-2 model is evaluated once on the full val set and scored three times: all, novel and base
  categories (``fewshot_metrics.json`` in the run folder).

``results.json`` holds every run and, per K, the mean and standard deviation over seeds; ``results.md``
is the table. Finished runs are skipped on a rerun and unfinished ones resume from their checkpoint.

The training machinery is imported only when a run starts (start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import tyro

from detr_ssl.atomic_io import atomic_write_json
from detr_ssl.cli.finetune_runs import (
    CONSOLE_LOG,
    DEMO_TRAINING,
    Init,
    RunData,
    RunProgressLog,
    TrainingOptions,
    check_positive,
    check_single_process,
    finetune_config,
    finished,
    parse_with_demo,
    require_files,
)
from detr_ssl.cli.common import run_main
from detr_ssl.cli.finetune import finetune
from detr_ssl.cli.run_pool import Job, run_jobs
from detr_ssl.config import FinetuneConfig, to_plain
from detr_ssl.datasets import demo_detection_dataset
from detr_ssl.datasets.coco_json import read_json
from detr_ssl.errors import ConfigError, DataError
from detr_ssl.protocols import (
    KShotSelection,
    base_training_set,
    kshot_document,
    sample_k_shot,
    split_categories,
    write_selection_json,
)
from detr_ssl.protocols.report import aggregate, field_column, markdown_table, metric_column, write_report

BASE_DIR = "base_training"
METRICS_FILE = "metrics.json"
FEWSHOT_METRICS_FILE = "fewshot_metrics.json"
SELECTION_FILE = "selection.json"
COCO_LAYOUT = ("annotations/instances_train2017.json", "train2017", "annotations/instances_val2017.json", "val2017")


@dataclass(frozen=True)
class FewShotConfig:
    """Few-shot COCO benchmark: base training, then K-shot fine-tuning for every (K, seed)."""

    coco_root: Path | None = None
    """COCO 2017 folder: annotations/instances_{train,val}2017.json, train2017/, val2017/."""
    demo: bool = False
    """Use the embedded demo set instead (tiny model, small schedule, fewer shots and seeds)."""
    shots: tuple[int, ...] = (10, 30)
    """K: annotated instances per class in the stage-2 training set."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """K-shot sampling seeds (TFA seed 0 is the standard split); also each run's training seed."""
    pretrained: Path | None = None
    """Checkpoint stage 1 starts from (e.g. DetReg's pretrained.pth); default: random init."""
    backbone_init: Path | None = None
    """Backbone-only weights stage 1 starts from instead (the supervised baseline)."""
    output_dir: Path = Path("outputs/fewshot-coco")
    base_epochs: int = 50
    """Stage-1 (base classes) epochs."""
    base_lr_drop: int = 40
    """Stage-1 epoch at which the learning rate is divided by 10."""
    fewshot_epochs: int = 150
    """Stage-2 (K-shot) epochs (DetReg: ~150)."""
    fewshot_lr_drop: int = 140
    """Stage-2 epoch at which the learning rate is divided by 10."""
    training: Annotated[TrainingOptions, tyro.conf.OmitArgPrefixes] = TrainingOptions()


def demo_fewshot() -> FewShotConfig:
    """Minutes on a CPU: 64 demo images, 5 classes (novel ids 1, 3, 7; base 8, 12), K in {2, 5}, 2 seeds."""
    return FewShotConfig(
        demo=True, shots=(2, 5), seeds=(0, 1), output_dir=Path("outputs/demo-fewshot"),
        base_epochs=30, base_lr_drop=25, fewshot_epochs=30, fewshot_lr_drop=25,
        # One run at a time: the four stage-2 runs take seconds each, and two workers' start-up cost more
        # than running them side by side saved (2 min 34 s against 2 min 4 s on 2 cores).
        training=replace(DEMO_TRAINING, jobs=1),
    )  # fmt: skip


def parse_fewshot_args(argv: list[str]) -> FewShotConfig:
    return parse_with_demo(FewShotConfig, demo_fewshot, argv)


def coco_files(cfg: FewShotConfig) -> RunData:
    """The full train and val sets: the demo set, or ``--coco-root`` checked for the COCO layout."""
    if cfg.demo == (cfg.coco_root is not None):
        raise ConfigError("give either --coco-root DIR (COCO 2017 layout) or --demo")
    if cfg.pretrained is not None and cfg.backbone_init is not None:
        raise ConfigError("give --pretrained or --backbone-init, not both")
    check_positive(cfg.shots, "--shots")
    if not cfg.seeds:
        raise ConfigError("--seeds needs at least one seed")
    if cfg.demo:
        demo = demo_detection_dataset()
        return RunData(demo.train_json, demo.image_dir, demo.val_json, demo.image_dir)
    paths = [cfg.coco_root / part for part in COCO_LAYOUT]
    require_files(*paths, hint=f"--coco-root must hold {', '.join(COCO_LAYOUT)}")
    return RunData(*paths)


def category_groups(val_document: Mapping[str, Any], val_json: Path) -> dict[str, list[int]]:
    """``{"novel": ids, "base": ids}`` among the val set's categories; both must be present."""
    base, novel = split_categories(c["id"] for c in val_document["categories"])
    if not base or not novel:
        raise DataError(f"{val_json}: few-shot COCO needs base and novel categories, found base {base}, "
                        f"novel {novel}")
    return {"novel": novel, "base": base}


def nest_metrics(flat: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{"AP": .., "novel/AP": ..}`` -> ``{"all": {"AP": ..}, "novel": {"AP": ..}}``."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        group, _, name = key.rpartition("/")
        nested.setdefault(group or "all", {})[name] = value
    return nested


class FewShotBenchmark:
    """Runs the benchmark of one `FewShotConfig`; every step writes into ``cfg.output_dir``."""

    def __init__(self, cfg: FewShotConfig) -> None:
        self.cfg = cfg
        self.files = coco_files(cfg)
        self.out = Path(cfg.output_dir)
        self.groups = category_groups(read_json(self.files.val_json), self.files.val_json)
        self.progress = RunProgressLog(1 + len(cfg.shots) * len(cfg.seeds))

    @functools.cached_property
    def train_document(self) -> dict[str, Any]:
        return read_json(self.files.train_json)

    def __getstate__(self) -> dict[str, Any]:
        """What a ``--jobs`` worker receives: not the training document (COCO's is hundreds of MB); it reads
        its own."""
        return {name: value for name, value in self.__dict__.items() if name != "train_document"}

    def _config(self, data: RunData, init: Init, epochs: int, lr_drop: int, output_dir: Path,
                seed: int | None = None) -> FinetuneConfig:
        return finetune_config(self.cfg.training, data, init, epochs, lr_drop, output_dir, seed)

    def base_training(self) -> dict[str, Any]:
        """Stage 1; returns its record (folder, metrics on the base classes of val)."""
        stage_dir = self.out / BASE_DIR
        label = "stage 1: base training"
        metrics = finished(stage_dir / METRICS_FILE)
        if metrics is not None:
            self.progress.skip(label, f"AP {metrics['AP']:.3f}")
        else:
            self.progress.start(label)
            train_json, val_json = stage_dir / "base_train.json", stage_dir / "base_val.json"
            atomic_write_json(train_json, base_training_set(self.train_document))
            atomic_write_json(val_json, base_training_set(read_json(self.files.val_json)))
            data = replace(self.files, train_json=train_json, val_json=val_json)
            init = Init("stage1", pretrained=self.cfg.pretrained, backbone=self.cfg.backbone_init)
            metrics = finetune(self._config(data, init, self.cfg.base_epochs, self.cfg.base_lr_drop, stage_dir))
            self.progress.done(label, f"base-class AP {metrics['AP']:.3f}")
        return {"dir": BASE_DIR, "metrics": metrics}

    @staticmethod
    def fewshot_record(k: int, seed: int, selection: KShotSelection) -> dict[str, Any]:
        """What the report says about the stage-2 run of (K, seed) on its K-shot ``selection``, before its
        metrics; ``dir`` is its folder."""
        return {"shots": k, "seed": seed, "dir": _run_name(k, seed), "num_images": len(selection.image_ids),
                "num_annotations": len(selection.annotation_ids)}

    def fewshot_train(self, k: int, seed: int, selection: KShotSelection) -> dict[str, Any]:
        """Stage 2 for one (K, seed) on its K-shot ``selection``: writes the selection and its training set,
        fine-tunes; returns its metrics."""
        from detr_ssl.engine.checkpoint import LATEST

        name = _run_name(k, seed)
        run_dir = self.out / name
        write_selection_json(run_dir / SELECTION_FILE, selection, k, seed)
        train_json = run_dir / f"train_{name}.json"
        atomic_write_json(train_json, kshot_document(self.train_document, selection))
        init = Init("stage1", pretrained=self.out / BASE_DIR / LATEST)
        cfg = self._config(replace(self.files, train_json=train_json), init, self.cfg.fewshot_epochs,
                           self.cfg.fewshot_lr_drop, run_dir, seed)
        # One prediction pass scores all, novel and base categories. A run trained before but interrupted
        # while scoring resumes at its last epoch, so it is only scored.
        metrics = nest_metrics(finetune(cfg, self.groups))
        atomic_write_json(run_dir / FEWSHOT_METRICS_FILE, metrics, indent=1)
        return metrics

    def run(self) -> dict[str, Any]:
        """Stage 1 in this process, then the stage-2 runs ``--jobs`` at a time; the report is rewritten after
        every run. Returns the ``results.json`` content."""
        base = self.base_training()
        runs: dict[str, dict[str, Any]] = {}  # run folder -> its record, in the report's order
        jobs = []
        for k in self.cfg.shots:
            for seed in self.cfg.seeds:
                selection = sample_k_shot(self.train_document, k, seed)
                record = self.fewshot_record(k, seed, selection)
                runs[record["dir"]] = record
                label = f"stage 2: K={k}, seed {seed}"
                metrics = finished(self.out / record["dir"] / FEWSHOT_METRICS_FILE)
                if metrics is not None:
                    self.progress.skip(label, _summary(metrics))
                    record["metrics"] = metrics
                else:
                    jobs.append(Job(record["dir"], label, functools.partial(self.fewshot_train, k, seed, selection),
                                    self.out / record["dir"] / CONSOLE_LOG))

        def done(job: Job, metrics: dict[str, Any]) -> None:
            runs[job.key]["metrics"] = metrics
            self.progress.done(job.label, _summary(metrics))
            self.report(base, [run for run in runs.values() if "metrics" in run])

        run_jobs(jobs, self.cfg.training.jobs, lambda job: self.progress.start(job.label), done)
        return self.report(base, [run for run in runs.values() if "metrics" in run])

    def report(self, base: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
        summary = aggregate(runs, ["shots"])
        results = {"protocol": "few-shot COCO, TFA split, two-stage fine-tuning (DetReg)",
                   "novel_category_ids": self.groups["novel"], "base_category_ids": self.groups["base"],
                   "config": to_plain(self.cfg), "base_training": base, "runs": runs, "summary": summary}
        columns = [field_column("K", "shots"), field_column("seeds", "seeds", lambda s: str(len(s))),
                   metric_column("novel AP", "novel/AP"), metric_column("novel AP50", "novel/AP50"),
                   metric_column("novel AP75", "novel/AP75"), metric_column("base AP", "base/AP")]
        markdown = ("# Few-shot COCO\n\nBox AP (%) on val, mean ± std over seeds; novel = the VOC classes "
                    f"(COCO ids {self.groups['novel']}), base = the others.\n\n" + markdown_table(summary, columns)
                    + f"\nStage 1 (base classes only): AP {100 * base['metrics']['AP']:.1f}\n")
        json_path, md_path = write_report(self.out, results, markdown)
        print(f"results written to {json_path} and {md_path}", flush=True)
        return results


def _run_name(k: int, seed: int) -> str:
    return f"{k}shot_seed{seed}"


def _summary(metrics: Mapping[str, Mapping[str, float]]) -> str:
    return f"novel AP {metrics['novel']['AP']:.3f}, base AP {metrics['base']['AP']:.3f}"


def fewshot(cfg: FewShotConfig) -> dict[str, Any]:
    """Runs (or continues) the benchmark; returns the ``results.json`` content."""
    check_single_process()
    return FewShotBenchmark(cfg).run()


def main(argv: list[str]) -> int:
    fewshot(parse_fewshot_args(argv))
    return 0


def cli() -> int:
    return run_main(main)
