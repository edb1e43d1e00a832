"""Novel / base AP: one prediction pass scored on each category group (make_coco_evaluate's
``category_groups``), as the few-shot benchmark reports it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detr_ssl.cli.common import make_accelerator
from detr_ssl.cli.fewshot import category_groups, nest_metrics
from detr_ssl.config import RunConfig
from detr_ssl.datasets import CocoDetection, make_eval_transforms
from detr_ssl.datasets.collate import Batch
from detr_ssl.engine.evaluate import make_coco_evaluate
from detr_ssl.errors import DataError
from detr_ssl.evaluation import METRIC_NAMES
from detr_ssl.models.outputs import DetectionOutput

# COCO ids 1 and 3 are novel (VOC classes), 8 and 12 base; two objects of each class, one per image.
CATEGORIES = [{"id": c, "name": f"class{c}"} for c in (1, 3, 8, 12)]
CORNERS = {1: (4, 4), 3: (36, 4), 8: (4, 36), 12: (36, 36)}
IMAGES = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)]
ANNOTATIONS = [
    {"id": 10 * image["id"] + c, "image_id": image["id"], "category_id": c, "bbox": [x, y, 20, 20], "iscrowd": 0}
    for image in IMAGES for c, (x, y) in CORNERS.items()
]  # fmt: skip
GROUPS = {"novel": [1, 3], "base": [8, 12]}


def oracle(detected_category_ids: set[int], category_ids: list[int]):
    """A detector that finds exactly the ground-truth objects of ``detected_category_ids`` (score ~1);
    its other queries are negligible-score boxes in a corner with no object, so they only add misses."""
    detected = {category_ids.index(c) for c in detected_category_ids}

    def detect(model: nn.Module, batch: Batch) -> DetectionOutput:
        queries = max(len(t["labels"]) for t in batch.targets)
        logits = torch.full((len(batch.targets), queries, len(category_ids)), -20.0)
        boxes = torch.tensor([0.98, 0.98, 0.02, 0.02]).repeat(len(batch.targets), queries, 1)
        for b, target in enumerate(batch.targets):
            for q, (label, box) in enumerate(zip(target["labels"].tolist(), target["boxes"])):
                if label in detected:
                    boxes[b, q] = box
                    logits[b, q, label] = 20.0
        return DetectionOutput(logits=logits, boxes=boxes)

    return detect


@pytest.fixture
def scored(make_coco):
    files = make_coco(images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES)
    dataset = CocoDetection(files.annotation_file, files.image_dir, make_eval_transforms(64, 64))
    accelerator = make_accelerator(RunConfig(cpu=True))

    def score(detected: set[int], groups=GROUPS) -> dict[str, float]:
        evaluate = make_coco_evaluate(accelerator, dataset, 2, 0, oracle(detected, dataset.category_ids),
                                      category_groups=groups)
        return evaluate(nn.Identity())

    return score


@pytest.mark.parametrize(
    ("detected", "novel_ap", "base_ap"),
    [({8, 12}, 0.0, 1.0), ({1, 3}, 1.0, 0.0), ({1, 8, 12}, 0.5, 1.0)],
    ids=["base-only", "novel-only", "partial"],
)
def test_novel_and_base_ap_use_their_own_categories(scored, detected, novel_ap, base_ap) -> None:
    metrics = scored(detected)
    assert metrics["novel/AP"] == pytest.approx(novel_ap, abs=1e-6)
    assert metrics["base/AP"] == pytest.approx(base_ap, abs=1e-6)
    assert metrics["novel/AP50"] == pytest.approx(novel_ap, abs=1e-6)
    assert metrics["AP"] == pytest.approx(len(detected) / 4, abs=1e-6)  # all four categories


def test_without_groups_only_the_overall_metrics(scored) -> None:
    assert set(scored({1, 3, 8, 12}, groups=None)) == set(METRIC_NAMES)


def test_nest_metrics_splits_the_groups(scored) -> None:
    nested = nest_metrics(scored({8, 12}))
    assert set(nested) == {"all", "novel", "base"}
    assert set(nested["novel"]) == set(METRIC_NAMES) and nested["base"]["AP"] == pytest.approx(1.0)


def test_category_groups_follow_the_tfa_split() -> None:
    demo_categories = {"categories": [{"id": c} for c in (12, 1, 8, 7, 3)]}
    assert category_groups(demo_categories, "val.json") == {"novel": [1, 3, 7], "base": [8, 12]}
    with pytest.raises(DataError, match="val.json.*novel"):
        category_groups({"categories": [{"id": 8}, {"id": 12}]}, "val.json")
