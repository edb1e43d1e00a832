"""``scripts/semisup.py``: semi-supervised label fractions (DetReg / STAC protocol).

For every label fraction and seed the STAC-style fold is written (`write_fraction`: ``round(N * fraction)``
images drawn with ``default_rng(seed)``), and a detector is fine-tuned on it from every initialisation
given: full pretrained detectors (``--pretrained NAME=PATH``), a backbone only (``--backbone-init``), and
nothing (``--random-init``). Each model is evaluated on the full val set.

Epochs per fraction follow DetReg's schedule (1% -> 2000, 2% -> 1000, 5% -> 500, 10% -> 400, `PUBLISHED_EPOCHS`);
a fraction not in the schedule gets epochs inversely proportional to its number of labelled images,
anchored at the closest schedule point (`fraction_epochs`). The learning rate drops at the same relative
point of every schedule (``--lr-drop-at``, 0.8 = the Deformable DETR recipe's 40 of 50 epochs; DetReg's
released fine-tuning scripts set ``lr_drop`` = ``epochs``, i.e. ``--lr-drop-at 1.0``).

``--demo`` runs it end to end on the embedded demo set: the pretraining chain `DEMO_PRETRAIN_CHAIN` on the
demo training images (labels ignored), then fine-tuning at demo fractions from its result and from random
init with the same budget.

Outputs: ``results.json`` (every run; mean and std over seeds per fraction and initialisation),
``results.md`` and ``ap_vs_fraction.png`` (needs matplotlib, the ``[plots]`` extra). Finished runs are
skipped on a rerun and unfinished ones resume from their checkpoint.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from detr_ssl.cli.finetune_runs import (
    CONSOLE_LOG,
    DEMO_TRAINING,
    RESUME_FLAGS,
    Init,
    RunData,
    RunProgressLog,
    TrainingOptions,
    check_single_process,
    finetune_config,
    finished,
    parse_with_demo,
    require_files,
)
from detr_ssl.cli.common import run_main
from detr_ssl.cli.finetune import finetune
from detr_ssl.cli.pretrain import parse_pretrain_args, pretrain
from detr_ssl.cli.run_pool import Job, run_jobs
from detr_ssl.config import PRETRAINED_FILE, to_plain
from detr_ssl.datasets import demo_detection_dataset
from detr_ssl.datasets.coco_json import read_json
from detr_ssl.errors import ConfigError
from detr_ssl.plotting import new_figure, save_figure
from detr_ssl.protocols import format_percent, fraction_run_name, write_fraction
from detr_ssl.protocols.report import aggregate, field_column, markdown_table, metric_column, write_report
from detr_ssl.protocols.schedule import PUBLISHED_EPOCHS, fraction_epochs, labelled_images, lr_drop_epoch
from detr_ssl.tasks.options.backbone import SWAV_LAYOUT_FILE

METRICS_FILE = "metrics.json"
PLOT_FILE = "ap_vs_fraction.png"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CHAIN_KEY = "pretraining chain"
"""The job key of the pretraining chain's last step."""


@dataclass(frozen=True)
class PretrainStep:
    """One run of ``scripts/pretrain.py --task TASK FLAGS`` in the demo's pretraining chain."""

    task: str
    flags: tuple[str, ...] = ()
    from_previous: tuple[str, ...] = ()
    """Flags given the previous step's backbone (its SwAV-layout export), when there is a previous step."""


#: The demo's pretraining chain, run in order on the demo training images: SwAV trains the backbone, then
#: DetReg takes it as teacher and (frozen) backbone init, as in the paper. DetReg's crops are embedded at
#: 64 px instead of 128: the teacher is most of a CPU step's cost.
DEMO_PRETRAIN_CHAIN: tuple[PretrainStep, ...] = (
    # Half the released colour distortion: at strength 1 the demo's SwAV ResNet-18 fell below random init on
    # the demo objects' k-NN probe (scripts/bench_knn.py), and it is the DetReg teacher here.
    PretrainStep("swav", ("--epochs", "40", "--lr-drop", "32", "--crops.color-strength", "0.5")),
    PretrainStep("detreg", ("--epochs", "20", "--lr-drop", "16", "--crop-size", "64"),
                 from_previous=("--teacher-checkpoint", "--backbone-init")),
)


@dataclass(frozen=True)
class SemiSupConfig:
    """Label-fraction benchmark: fine-tune every initialisation on every (fraction, seed) fold."""

    train_json: Path | None = None
    """COCO-format training annotations the folds are drawn from (e.g. instances_train2017.json)."""
    val_json: Path | None = None
    """COCO-format validation annotations (the full val set is always used)."""
    images: Path | None = None
    """Folder of the training images."""
    val_images: Path | None = None
    """Folder of the validation images (default: --images)."""
    demo: bool = False
    """Embedded demo set: pretraining chain on its training images, then demo fractions (tiny model)."""
    fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
    """Label fractions of the training images, in (0, 1]."""
    seeds: tuple[int, ...] = (42,)
    """Fold seeds (DetReg: 42); also each run's training seed."""
    pretrained: Annotated[tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="NAME=PATH")] = ()
    """A pretrained detector to fine-tune, as NAME=PATH."""
    backbone_init: Path | None = None
    """Backbone-only baseline (e.g. an ImageNet or SwAV ResNet); reported as 'backbone'."""
    random_init: bool = False
    """Also fine-tune from random initialisation; reported as 'random'."""
    schedule: tuple[str, ...] = tuple(f"{f:g}={e}" for f, e in PUBLISHED_EPOCHS.items())
    """Epochs per label fraction as FRACTION=EPOCHS; other fractions are scaled from the closest one."""
    lr_drop_at: float = 0.8
    """Learning-rate drop as a fraction of each run's epochs (1.0: no drop)."""
    output_dir: Path = Path("outputs/semisup")
    training: Annotated[TrainingOptions, tyro.conf.OmitArgPrefixes] = TrainingOptions()


def demo_semisup() -> SemiSupConfig:
    """Minutes on a CPU: 10%, 25%, 50% of the 64 demo images (2 folds each), the demo chain's detector vs
    random init."""
    return SemiSupConfig(
        demo=True, fractions=(0.1, 0.25, 0.5), seeds=(42, 43), random_init=True, schedule=("0.5=20",),
        output_dir=Path("outputs/demo-semisup"),
        training=DEMO_TRAINING,
    )  # fmt: skip


def parse_semisup_args(argv: list[str]) -> SemiSupConfig:
    return parse_with_demo(SemiSupConfig, demo_semisup, argv)


# -- the schedule ------------------------------------------------------------------------------------


def parse_schedule(items: Sequence[str]) -> dict[float, int]:
    """``["0.01=2000", ...]`` -> ``{0.01: 2000, ...}``; bad items are a `ConfigError`."""
    schedule: dict[float, int] = {}
    for item in items:
        fraction, _, epochs = item.partition("=")
        try:
            point, count = float(fraction), int(epochs)
        except ValueError:
            raise ConfigError(f"--schedule: expected FRACTION=EPOCHS (e.g. 0.01=2000), got {item!r}") from None
        if not (0.0 < point <= 1.0 and count >= 1):
            raise ConfigError(f"--schedule: {item!r} needs a fraction in (0, 1] and at least 1 epoch")
        schedule[point] = count
    if not schedule:
        raise ConfigError("--schedule needs at least one FRACTION=EPOCHS")
    return schedule


# -- initialisations and data ------------------------------------------------------------------------


def parse_inits(cfg: SemiSupConfig) -> list[Init]:
    """The initialisations given on the command line, in the order: --pretrained ones, backbone, random."""
    inits = []
    for item in cfg.pretrained:
        name, _, path = item.partition("=")
        if not _NAME.match(name) or not path:
            raise ConfigError(f"--pretrained: expected NAME=PATH with a name of letters, digits, '_.-', got {item!r}")
        require_files(Path(path), hint=f"--pretrained {name}=PATH must name a checkpoint")
        inits.append(Init(name, pretrained=Path(path)))
    if cfg.backbone_init is not None:
        require_files(cfg.backbone_init, hint="--backbone-init must name a backbone weights file")
        inits.append(Init("backbone", backbone=cfg.backbone_init))
    if cfg.random_init:
        inits.append(Init("random"))
    names = [init.name for init in inits]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"initialisation name(s) {duplicates} given twice")
    return inits


def data_files(cfg: SemiSupConfig) -> RunData:
    if cfg.demo:
        if cfg.train_json is not None:
            raise ConfigError("give either --train-json (with --val-json, --images) or --demo")
        demo = demo_detection_dataset()
        return RunData(demo.train_json, demo.image_dir, demo.val_json, demo.image_dir)
    if cfg.train_json is None or cfg.val_json is None or cfg.images is None:
        raise ConfigError("give --train-json, --val-json and --images (or --demo)")
    data = RunData(cfg.train_json, cfg.images, cfg.val_json, cfg.val_images or cfg.images)
    require_files(data.train_json, data.train_images, data.val_json, data.val_images,
                  hint="check --train-json, --val-json, --images, --val-images")
    return data


# -- the demo's pretraining chain --------------------------------------------------------------------


def step_argv(step: PretrainStep, output_dir: Path, data: RunData, previous: Path | None) -> list[str]:
    """The pretraining flags of one chain step: demo preset on the training images of ``data``."""
    argv = ["--task", step.task, "--preset", "demo", "--data", str(data.train_json), "--image-dir",
            str(data.train_images), "--output-dir", str(output_dir), *RESUME_FLAGS, *step.flags]
    if previous is not None:
        for flag in step.from_previous:
            argv += [flag, str(previous / SWAV_LAYOUT_FILE)]
    return argv


def chain_jobs(chain: Sequence[PretrainStep], data: RunData, root: Path) -> tuple[list[Job], Init]:
    """The chain's unfinished steps as jobs, each needing the one before (a step whose ``pretrained.pth``
    exists has finished and is left out), and the initialisation the chain makes: the last step's detector,
    named after its task. A fine-tune of it needs the job keyed ``CHAIN_KEY``."""
    if not chain:
        raise ConfigError("the pretraining chain is empty")
    jobs: list[Job] = []
    previous: Path | None = None
    for index, step in enumerate(chain, start=1):
        output_dir = root / f"{index}-{step.task}"
        label = f"pretraining step {index}/{len(chain)}: {step.task}"
        key = CHAIN_KEY if index == len(chain) else output_dir.name
        if (output_dir / PRETRAINED_FILE).is_file():
            print(f"{label}: finished before, skipped", flush=True)
        else:
            argv = step_argv(step, output_dir, data, previous)
            needs = (jobs[-1].key,) if jobs else ()
            jobs.append(Job(key, label, functools.partial(run_pretrain, argv), output_dir / CONSOLE_LOG, needs))
        previous = output_dir
    return jobs, Init(chain[-1].task, pretrained=previous / PRETRAINED_FILE)


def run_pretrain(argv: list[str]) -> None:
    pretrain(parse_pretrain_args(argv))


# -- the plot ----------------------------------------------------------------------------------------


def plot_ap_vs_fraction(summary: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """AP (%) against label fraction (%), one line per initialisation, error bars = std over seeds.
    Returns False, after saying so, when matplotlib is not installed."""
    figure = new_figure(path)
    if figure is None:
        return False
    axes = figure.add_subplot()
    for init in dict.fromkeys(entry["init"] for entry in summary):
        points = [(entry["fraction"] * 100, entry["metrics"]["AP"]) for entry in summary
                  if entry["init"] == init and entry["metrics"]["AP"]["n"]]
        axes.errorbar([x for x, _ in points], [s["mean"] * 100 for _, s in points],
                      yerr=[s["std"] * 100 for _, s in points], marker="o", capsize=3, label=init)
    fractions = sorted({entry["fraction"] for entry in summary})
    axes.set_xscale("log")
    axes.set_xticks([f * 100 for f in fractions], [f"{format_percent(f)}%" for f in fractions])
    axes.minorticks_off()
    axes.set_xlabel("labelled training images")
    axes.set_ylabel("box AP (%)")
    axes.set_title("AP vs label fraction")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    save_figure(figure, path)
    return True


# -- the benchmark -----------------------------------------------------------------------------------


class SemiSupBenchmark:
    """Runs the benchmark of one `SemiSupConfig`; every step writes into ``cfg.output_dir``."""

    def __init__(self, cfg: SemiSupConfig) -> None:
        self.cfg = cfg
        self.files = data_files(cfg)
        self.inits = parse_inits(cfg)
        if not self.inits and not cfg.demo:
            raise ConfigError("nothing to compare: give --pretrained NAME=PATH, --backbone-init and/or --random-init")
        if not cfg.seeds:
            raise ConfigError("--seeds needs at least one seed")
        self.out = Path(cfg.output_dir)
        self.num_images = len(read_json(self.files.train_json).get("images") or [])
        schedule = parse_schedule(cfg.schedule)
        self.epochs: dict[float, tuple[int, int]] = {}
        """fraction -> (epochs, epoch of the learning-rate drop)"""
        for fraction in cfg.fractions:
            epochs = fraction_epochs(fraction, self.num_images, schedule)
            self.epochs[fraction] = (epochs, lr_drop_epoch(epochs, cfg.lr_drop_at))

    def run(self) -> dict[str, Any]:
        """Pretraining chain (demo), then every run, ``--jobs`` at a time; the report is rewritten after
        every run."""
        jobs, inits = [], list(self.inits)
        if self.cfg.demo:
            jobs, chain_init = chain_jobs(DEMO_PRETRAIN_CHAIN, self.files, self.out / "pretrain")
            inits.insert(0, chain_init)
        runs: dict[str, dict[str, Any]] = {}  # fine-tune folder -> its record, in the report's order
        progress = RunProgressLog(len(jobs) + len(self.cfg.fractions) * len(self.cfg.seeds) * len(inits))
        for fraction in self.cfg.fractions:
            for seed in self.cfg.seeds:
                fold = write_fraction(self.files.train_json, self.out / "folds", fraction, seed).json_path
                for init in inits:
                    record = self.run_record(fraction, seed, init)
                    runs[record["dir"]] = record
                    label = self.run_label(fraction, seed, init)
                    metrics = finished(self.out / record["dir"] / METRICS_FILE)
                    if metrics is not None:
                        progress.skip(label, f"AP {metrics['AP']:.3f}")
                        record["metrics"] = metrics
                        continue
                    needs = (CHAIN_KEY,) if self.cfg.demo and init is inits[0] else ()
                    jobs.append(Job(record["dir"], label, functools.partial(self.train_one, fraction, seed, fold, init),
                                    self.out / record["dir"] / CONSOLE_LOG, needs))

        def start(job: Job) -> None:
            epochs = f" ({runs[job.key]['epochs']} epochs)" if job.key in runs else ""
            progress.start(job.label, epochs)

        def done(job: Job, metrics: dict[str, Any] | None) -> None:
            if job.key in runs:
                runs[job.key]["metrics"] = metrics
                progress.done(job.label, f"AP {metrics['AP']:.3f}")
                self.report(inits, [run for run in runs.values() if "metrics" in run])
            else:
                progress.done(job.label, "pretrained")

        run_jobs(jobs, self.cfg.training.jobs, start, done)
        return self.report(inits, [run for run in runs.values() if "metrics" in run])

    def run_record(self, fraction: float, seed: int, init: Init) -> dict[str, Any]:
        """What the report says about one run, before its metrics; ``dir`` is its folder."""
        epochs, lr_drop = self.epochs[fraction]
        return {"fraction": fraction, "init": init.name, "seed": seed,
                "dir": fraction_run_name(fraction, init.name, seed), "epochs": epochs, "lr_drop": lr_drop,
                "num_labelled": labelled_images(self.num_images, fraction)}

    @staticmethod
    def run_label(fraction: float, seed: int, init: Init) -> str:
        return f"{format_percent(fraction)}% labels, {init.name}, seed {seed}"

    def train_one(self, fraction: float, seed: int, fold: Path, init: Init) -> dict[str, Any]:
        """Fine-tunes ``init`` on one fold; returns its metrics."""
        epochs, lr_drop = self.epochs[fraction]
        data = RunData(fold, self.files.train_images, self.files.val_json, self.files.val_images)
        return finetune(finetune_config(self.cfg.training, data, init, epochs, lr_drop,
                                        self.out / fraction_run_name(fraction, init.name, seed), seed))

    def report(self, inits: Sequence[Init], runs: list[dict[str, Any]]) -> dict[str, Any]:
        summary = aggregate(runs, ["fraction", "init"])
        results = {"protocol": "semi-supervised label fractions (STAC folds, DetReg schedule)",
                   "inits": {init.name: to_plain(init) for init in inits}, "config": to_plain(self.cfg),
                   "runs": runs, "summary": summary}
        columns = [field_column("labels", "fraction", lambda f: f"{format_percent(f)}%"), field_column("init", "init"),
                   field_column("seeds", "seeds", lambda s: str(len(s))), metric_column("AP", "AP"),
                   metric_column("AP50", "AP50"), metric_column("AP75", "AP75")]
        markdown = ("# Semi-supervised label fractions\n\nBox AP (%) on the full val set"
                    + (", mean ± std over seeds" if len(self.cfg.seeds) > 1 else "") + ".\n\n"
                    + markdown_table(summary, columns))
        json_path, md_path = write_report(self.out, results, markdown)
        plotted = plot_ap_vs_fraction(summary, self.out / PLOT_FILE)
        print(f"results written to {json_path}, {md_path}" + (f", {self.out / PLOT_FILE}" if plotted else ""),
              flush=True)
        return results


def semisup(cfg: SemiSupConfig) -> dict[str, Any]:
    """Runs (or continues) the benchmark; returns the ``results.json`` content."""
    check_single_process()
    return SemiSupBenchmark(cfg).run()


def main(argv: list[str]) -> int:
    semisup(parse_semisup_args(argv))
    return 0


def cli() -> int:
    return run_main(main)
