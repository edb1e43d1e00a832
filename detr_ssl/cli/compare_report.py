"""What a pretext comparison measures and reports.

Per pretraining: the k-NN probe of the exported backbone (object crops of the validation set classified
against the training set's, cosine vote; :func:`detr_ssl.evaluation.knn.knn_probe`) and, for a detector
pretext, the class-agnostic recall of its own boxes on the validation set (AR@10/30/100, categories
ignored: how a label-free DetReg checkpoint is judged). Per method and label fraction: fine-tuned AP, AP50,
AP75 as mean ± std over the seeds, and the paired difference to random init (same fold, same seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from detr_ssl.cli.finetune_runs import finished
from detr_ssl.config import FINETUNE_PRESETS, to_plain
from detr_ssl.datasets import CocoDetection, collate_detection, make_eval_transforms
from detr_ssl.datasets.coco_json import read_json
from detr_ssl.detector import load_detector
from detr_ssl.evaluation import CocoEvaluator, postprocess
from detr_ssl.evaluation.knn import knn_probe
from detr_ssl.models.config import model_preset
from detr_ssl.models.teachers import FrozenEncoder, build_teacher, resnet_trunk
from detr_ssl.protocols import format_percent
from detr_ssl.protocols.comparison import RANDOM, PretrainStage
from detr_ssl.protocols.report import aggregate, field_column, markdown_table, mean_std, metric_column, write_report
from detr_ssl.tasks import all_tasks
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask

if TYPE_CHECKING:
    from detr_ssl.cli.compare import Comparison

PLOT_FILE = "ap_vs_fraction.png"
KNN_KS = (1, 5, 20)


def _datasets(comparison: Comparison) -> tuple[CocoDetection, CocoDetection]:
    """(training set, validation set) with the fine-tuning preset's evaluation transforms."""
    cfg = comparison.cfg
    data = FINETUNE_PRESETS[cfg.training.preset]().data
    transforms = make_eval_transforms(data.eval_size, data.max_size)
    return (CocoDetection(cfg.train_json, cfg.images, transforms),
            CocoDetection(cfg.val_json, cfg.val_images or cfg.images, transforms))


@torch.no_grad()
def class_agnostic_recall(checkpoint: Path, dataset: CocoDetection, batch_size: int = 4) -> dict[str, float]:
    """AR@10/30/100 of the detector in ``checkpoint`` on ``dataset``, its boxes' categories ignored."""
    detector = load_detector(checkpoint)
    evaluator = CocoEvaluator(dataset.coco, dataset.category_ids[:1] * detector.num_classes)
    for start in range(0, len(dataset), batch_size):
        batch = collate_detection([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        outputs = detector.detect(detector.model, batch)
        sizes = torch.stack([target["orig_size"] for target in batch.targets])
        for target, detections in zip(batch.targets, postprocess(outputs, sizes)):
            evaluator.update(int(target["image_id"]), detections)
    return evaluator.class_agnostic_recall()


def pretrain_measures(comparison: Comparison, stage: PretrainStage, pretrained: Path) -> dict[str, Any]:
    """The k-NN probe of the backbone ``pretrained`` holds and, for a detector pretext, its boxes' recall."""
    bank, queries = _datasets(comparison)
    arch = model_preset(comparison.cfg.training.model_size).backbone
    measures: dict[str, Any] = {"knn": knn_probe(build_teacher(pretrained, arch, "layer4"), bank, queries, KNN_KS)}
    if not issubclass(all_tasks()[stage.task], BackbonePretextTask):
        measures["recall"] = class_agnostic_recall(pretrained, queries)
    return measures


def random_init_knn(comparison: Comparison, seed: int = 0) -> dict[str, float]:
    """The k-NN probe of a randomly initialised backbone (the reference of the k-NN column)."""
    bank, queries = _datasets(comparison)
    torch.manual_seed(seed)
    arch = model_preset(comparison.cfg.training.model_size).backbone
    return knn_probe(FrozenEncoder(resnet_trunk(arch)), bank, queries, KNN_KS)


def paired_differences(runs: Sequence[Mapping[str, Any]], metric: str = "AP") -> list[dict[str, Any]]:
    """Per method (not random) and fraction: ``metric`` minus random init's on the same fold and seed,
    mean and std over the seeds both have."""
    reference = {(run["fraction"], run["seed"]): run["metrics"][metric] for run in runs if run["init"] == RANDOM}
    differences: dict[tuple[str, float], list[float]] = {}
    for run in runs:
        key = (run["fraction"], run["seed"])
        if run["init"] != RANDOM and key in reference:
            differences.setdefault((run["init"], run["fraction"]), []).append(run["metrics"][metric] - reference[key])
    rows = []
    for (method, fraction), values in differences.items():
        mean, std = mean_std(values)
        rows.append({"init": method, "fraction": fraction, "mean": mean, "std": std, "n": len(values)})
    return rows


def _finetune_runs(comparison: Comparison) -> list[dict[str, Any]]:
    """The record of every finished fine-tune, in plan order."""
    runs = []
    for stage in comparison.plan.finetuning:
        metrics = finished(comparison.stage_dir(stage) / "metrics.json")
        if metrics is not None:
            runs.append({"fraction": stage.fraction, "init": stage.method.name, "seed": stage.seed,
                         "dir": f"finetune/{stage.run_name}", "metrics": metrics})
    return runs


def _pretraining_records(comparison: Comparison) -> dict[str, Any]:
    from detr_ssl.cli.compare import STAGE_FILE

    records = {}
    for stage in comparison.plan.pretraining:
        path = stage.output_dir(comparison.root) / STAGE_FILE
        if path.is_file():
            records[stage.task] = read_json(path)
    return records


def _markdown(runs: list[dict[str, Any]], summary: list[dict[str, Any]], pretraining: Mapping[str, Any],
              random_knn: Mapping[str, float], seeds: int) -> str:
    columns = [field_column("method", "init"), field_column("labels", "fraction", lambda f: f"{format_percent(f)}%"),
               field_column("seeds", "seeds", lambda s: str(len(s))), metric_column("AP", "AP"),
               metric_column("AP50", "AP50"), metric_column("AP75", "AP75")]
    lines = ["# Pretext comparison", "",
             f"Fine-tuned box AP (%) on the full val set, mean ± std over {seeds} seed(s) (the same folds for "
             "every method).",
             "", markdown_table(summary, columns),
             "## Paired difference to random init", "",
             "AP of the method minus AP of random init on the same fold and seed (points), mean ± std.", "",
             "| method | labels | ΔAP | seeds |", "|---|---|---|---|"]
    for row in paired_differences(runs):
        lines.append(f"| {row['init']} | {format_percent(row['fraction'])}% | {100 * row['mean']:+.1f} ± "
                     f"{100 * row['std']:.1f} | {row['n']} |")
    lines += ["", "## Pretraining: cost and what it made", "",
              "k-NN: object crops of the val set classified against the train set's (layer4, cosine vote, "
              "top-1 at k = 1 / 5 / 20). Recall: class-agnostic AR@10 / 30 / 100 of a detector pretext's own boxes.",
              "", "| method | wall time (min) | peak RSS (GB) | k-NN top-1 | recall AR@10/30/100 |",
              "|---|---|---|---|---|",
              f"| {RANDOM} | - | - | {' / '.join(f'{v:.3f}' for v in random_knn.values())} | - |"]
    for task, record in pretraining.items():
        knn = " / ".join(f"{v:.3f}" for v in record["measures"]["knn"].values())
        recall = record["measures"].get("recall")
        recall_text = " / ".join(f"{v:.3f}" for v in recall.values()) if recall else "-"
        lines.append(f"| {task} | {record['wall_seconds'] / 60:.1f} | {record['peak_rss_mb'] / 1024:.2f} | {knn} | "
                     f"{recall_text} |")
    return "\n".join(lines) + "\n"


def write_comparison_report(comparison: Comparison) -> dict[str, Any]:
    """``results.json``, ``results.md`` and ``ap_vs_fraction.png`` of what has finished; returns the results."""
    from detr_ssl.cli.semisup import plot_ap_vs_fraction  # matplotlib only where it draws

    runs = _finetune_runs(comparison)
    summary = aggregate(runs, ["init", "fraction"]) if runs else []
    pretraining = _pretraining_records(comparison)
    random_knn = random_init_knn(comparison)
    results = {"protocol": "pretext comparison: label fractions (STAC folds, DetReg schedule)",
               "config": to_plain(comparison.cfg), "methods": [to_plain(m) for m in comparison.plan.methods],
               "runs": runs, "summary": summary, "paired_differences": paired_differences(runs),
               "pretraining": pretraining, "random_init_knn": random_knn}
    markdown = _markdown(runs, summary, pretraining, random_knn, len(comparison.cfg.seeds))
    json_path, md_path = write_report(comparison.root, results, markdown)
    plotted = bool(summary) and plot_ap_vs_fraction(summary, comparison.root / PLOT_FILE)
    print(f"results written to {json_path}, {md_path}" + (f", {comparison.root / PLOT_FILE}" if plotted else ""),
          flush=True)
    return results
