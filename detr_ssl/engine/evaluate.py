"""The evaluation loop: every process predicts its shard, the main process scores with pycocotools."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detr_ssl.datasets import CocoDetection, collate_detection
from detr_ssl.datasets.collate import Batch
from detr_ssl.engine.logging import progress_bars_off
from detr_ssl.engine.trainer import Evaluate
from detr_ssl.evaluation import CocoEvaluator, postprocess
from detr_ssl.evaluation.coco_eval import EvalBackend
from detr_ssl.models.outputs import DetectionOutput


Detect = Callable[[nn.Module, Batch], DetectionOutput]


def run_detector(model: nn.Module, batch: Batch) -> DetectionOutput:
    """The default :data:`Detect`: the model's own output is a :class:`DetectionOutput`."""
    return model(batch.images, batch.mask)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, accelerator: Accelerator, detect: Detect = run_detector,
            top_k: int = 100) -> list[dict[str, Any]]:
    """Detections for every image of ``loader`` (all processes' shards, gathered): a list of
    ``{"image_id", "scores", "labels", "boxes"}`` with boxes as absolute xyxy of the original image.
    ``detect`` turns a batch into detections (models whose output is not a DetectionOutput pass their own)."""
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="eval", leave=False, disable=progress_bars_off(accelerator.is_local_main_process)):
        outputs = detect(model, batch)
        orig_sizes = torch.stack([t["orig_size"] for t in batch.targets])
        detections = postprocess(outputs, orig_sizes, top_k=top_k)
        for target, det in zip(batch.targets, detections):
            results.append({"image_id": int(target["image_id"]), **{k: v.cpu() for k, v in det.items()}})
    model.train(was_training)
    return accelerator.gather_for_metrics(results, use_gather_object=True)


def make_coco_evaluate(accelerator: Accelerator, dataset: CocoDetection, batch_size: int,
                       num_workers: int = 0, detect: Detect = run_detector,
                       category_groups: Mapping[str, Sequence[int]] | None = None,
                       backend: EvalBackend = "pycocotools") -> Evaluate:
    """A callable ``model -> COCO box metrics`` over ``dataset`` (metrics are computed on the main
    process; other processes get an empty dict).

    ``category_groups`` (e.g. few-shot ``{"novel": [...], "base": [...]}``, COCO category ids) adds, per
    group, the metrics scored on that group's categories only, as ``"{group}/{metric}"``: one prediction
    pass, one COCOeval per group. ``backend`` picks the COCOeval implementation (same numbers).
    """
    # Own generator: evaluating must not move the training run's global RNG.
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                            collate_fn=collate_detection, generator=torch.Generator()))

    def evaluate(model: nn.Module) -> dict[str, float]:
        detections = predict(model, loader, accelerator, detect)
        if not accelerator.is_main_process:
            return {}
        evaluator = CocoEvaluator(dataset.coco, dataset.category_ids, backend=backend)
        unique = {d["image_id"]: d for d in detections}  # even_batches may repeat an image
        for det in unique.values():
            evaluator.update(det["image_id"], det)
        metrics = evaluator.compute()
        for group, cat_ids in (category_groups or {}).items():
            metrics.update({f"{group}/{name}": value for name, value in evaluator.compute(cat_ids).items()})
        return metrics

    return evaluate
