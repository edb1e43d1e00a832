"""COCO evaluation: postprocessing, category-id mapping, pycocotools metrics and their edge cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from detr_ssl.benchmarking import synthetic_coco_predictions
from detr_ssl.errors import ConfigError
from detr_ssl.evaluation import METRIC_NAMES, CocoEvaluator, postprocess, write_metrics_json
from detr_ssl.evaluation.coco_eval import cocoeval_class
from detr_ssl.models.outputs import DetectionOutput

CATEGORY_IDS = [1, 5, 90]  # non-contiguous on purpose: label i is CATEGORY_IDS[i]


def coco_document() -> dict[str, list[dict[str, Any]]]:
    """Three images, small (< 32²), medium and large (> 96²) boxes of every category; no area/iscrowd
    fields (the evaluator fills them in)."""
    boxes = {  # image id -> [(category id, [x, y, w, h])]
        1: [(1, [10, 10, 20, 15]), (5, [100, 80, 60, 50]), (90, [200, 150, 150, 120])],
        2: [(5, [5, 5, 25, 25]), (90, [50, 60, 40, 70]), (1, [300, 200, 110, 100])],
        3: [(90, [20, 30, 18, 12]), (1, [150, 40, 64, 48]), (5, [260, 120, 120, 200])],
    }
    images = [{"id": image_id, "file_name": f"{image_id}.jpg", "width": 480, "height": 360} for image_id in boxes]
    annotations = [{"id": 10 * image_id + i, "image_id": image_id, "category_id": cat, "bbox": bbox}
                   for image_id, anns in boxes.items() for i, (cat, bbox) in enumerate(anns)]
    categories = [{"id": cat, "name": f"class{cat}"} for cat in (90, 1, 5)]  # file order is not label order
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_from_ground_truth(document: dict[str, Any]) -> dict[int, dict[str, torch.Tensor]]:
    """One detection per ground-truth box, as `postprocess` would return it (labels, xyxy pixels)."""
    per_image: dict[int, dict[str, list]] = {img["id"]: {"scores": [], "labels": [], "boxes": []}
                                            for img in document["images"]}
    for i, ann in enumerate(document["annotations"]):
        x, y, w, h = ann["bbox"]
        entry = per_image[ann["image_id"]]
        entry["scores"].append(0.9 - 0.01 * i)
        entry["labels"].append(CATEGORY_IDS.index(ann["category_id"]))
        entry["boxes"].append([x, y, x + w, y + h])
    return {image_id: {"scores": torch.tensor(d["scores"]), "labels": torch.tensor(d["labels"], dtype=torch.int64),
                       "boxes": torch.tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4)}
            for image_id, d in per_image.items()}


def evaluate(ground_truth: Any, detections: dict[int, dict[str, torch.Tensor]], **compute: Any) -> dict[str, float]:
    evaluator = CocoEvaluator(ground_truth, CATEGORY_IDS)
    for image_id, dets in detections.items():
        evaluator.update(image_id, dets)
    return evaluator.compute(**compute)


def test_perfect_detections_score_one() -> None:
    metrics = evaluate(coco_document(), detections_from_ground_truth(coco_document()))
    assert tuple(metrics) == METRIC_NAMES == ("AP", "AP50", "AP75", "APs", "APm", "APl")
    for name, value in metrics.items():
        assert isinstance(value, float)
        assert value == pytest.approx(1.0), name


def test_json_path_gives_the_same_metrics(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_document()), encoding="utf-8")
    metrics = evaluate(path, detections_from_ground_truth(coco_document()))
    assert metrics["AP"] == pytest.approx(1.0)


def test_jittered_and_mislabelled_detections_score_less() -> None:
    jittered = detections_from_ground_truth(coco_document())
    for dets in jittered.values():
        dets["boxes"] += torch.tensor([6.0, -5.0, 4.0, 7.0])
    metrics = evaluate(coco_document(), jittered)
    assert 0.0 <= metrics["AP"] < 0.9
    assert metrics["AP75"] < metrics["AP50"] + 1e-9

    shuffled = detections_from_ground_truth(coco_document())
    for dets in shuffled.values():
        dets["labels"] = (dets["labels"] + 1) % len(CATEGORY_IDS)  # every label wrong
    assert evaluate(coco_document(), shuffled)["AP"] == pytest.approx(0.0)


def test_no_detections_score_zero_without_crashing() -> None:
    empty = {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    metrics = evaluate(coco_document(), {image["id"]: empty for image in coco_document()["images"]})
    assert metrics == {name: 0.0 for name in METRIC_NAMES}
    assert evaluate(coco_document(), {}) == {name: 0.0 for name in METRIC_NAMES}  # update never called


def test_only_updated_images_are_scored() -> None:
    perfect = detections_from_ground_truth(coco_document())
    metrics = evaluate(coco_document(), {1: perfect[1]})  # images 2 and 3 were never seen
    assert metrics["AP"] == pytest.approx(1.0)


def test_cat_ids_restricts_the_metrics() -> None:
    detections = detections_from_ground_truth(coco_document())
    for dets in detections.values():  # category 1 (label 0) stays perfect, the others are shifted away
        wrong = dets["labels"] != 0
        dets["boxes"][wrong] += 200.0
    assert evaluate(coco_document(), detections, cat_ids=[1])["AP"] == pytest.approx(1.0)
    assert evaluate(coco_document(), detections, cat_ids=[5, 90])["AP"] == pytest.approx(0.0)
    assert evaluate(coco_document(), detections)["AP"] == pytest.approx(1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        evaluate(coco_document(), detections, cat_ids=[2])


def test_missing_object_sizes_are_minus_one() -> None:
    document = coco_document()
    document["annotations"] = [a for a in document["annotations"] if a["bbox"][2] * a["bbox"][3] > 96**2]
    metrics = evaluate(document, detections_from_ground_truth(document))
    assert metrics["APs"] == metrics["APm"] == -1.0
    assert metrics["APl"] == pytest.approx(1.0)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="category ids"):
        CocoEvaluator(coco_document(), [1, 5, 7])
    evaluator = CocoEvaluator(coco_document(), CATEGORY_IDS)
    with pytest.raises(ValueError, match="image id"):
        evaluator.update(999, detections_from_ground_truth(coco_document())[1])
    bad_label = {"scores": torch.ones(1), "labels": torch.tensor([3]), "boxes": torch.tensor([[0.0, 0, 5, 5]])}
    with pytest.raises(ValueError, match="labels"):
        evaluator.update(1, bad_label)


def test_pycocotools_output_is_quiet_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    detections = detections_from_ground_truth(coco_document())
    evaluate(coco_document(), detections)
    assert capsys.readouterr().out == ""
    evaluator = CocoEvaluator(coco_document(), CATEGORY_IDS, verbose=True)
    evaluator.update(1, detections[1])
    evaluator.compute()
    assert "Average Precision" in capsys.readouterr().out


def test_postprocess_takes_top_k_over_queries_and_classes_and_scales_to_hw() -> None:
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 2, 1] = 3.0  # best: query 2, class 1
    logits[0, 0, 1] = 2.0  # second: query 0, class 1
    logits[0, 2, 0] = 1.0  # third: query 2 again, class 0
    boxes = torch.tensor([[[0.25, 0.5, 0.5, 1.0], [0.5, 0.5, 0.1, 0.1], [0.5, 0.25, 0.2, 0.5]]])
    output = DetectionOutput(logits=logits, boxes=boxes)

    (result,) = postprocess(output, torch.tensor([[200, 400]]), top_k=3)  # H = 200, W = 400
    assert result["labels"].tolist() == [1, 1, 0]
    torch.testing.assert_close(result["scores"], torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    torch.testing.assert_close(result["boxes"], torch.tensor([[160.0, 0.0, 240.0, 100.0],
                                                              [0.0, 0.0, 200.0, 200.0],
                                                              [160.0, 0.0, 240.0, 100.0]]))
    assert len(postprocess(output, torch.tensor([[200, 400]]), top_k=100)[0]["scores"]) == 3 * 2


def test_postprocess_round_trips_through_the_evaluator() -> None:
    """Ground-truth boxes, normalised as the model predicts them, score AP 1 after postprocessing."""
    document = coco_document()
    evaluator = CocoEvaluator(document, CATEGORY_IDS)
    for image in document["images"]:
        anns = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        size = torch.tensor([image["width"], image["height"]] * 2, dtype=torch.float32)
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        cxcywh = torch.cat((xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]), dim=-1) / size
        logits = torch.full((1, len(anns), len(CATEGORY_IDS)), -8.0)
        for query, ann in enumerate(anns):
            logits[0, query, CATEGORY_IDS.index(ann["category_id"])] = 8.0
        output = DetectionOutput(logits=logits, boxes=cxcywh[None])
        (dets,) = postprocess(output, torch.tensor([[image["height"], image["width"]]]))
        evaluator.update(image["id"], dets)
    assert evaluator.compute()["AP"] == pytest.approx(1.0)


def test_write_metrics_json_is_atomic_and_strict(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.json"
    write_metrics_json(path, {"AP": 0.5, "AP50": 0.75})
    write_metrics_json(path, {"AP": 0.25, "APs": -1.0})  # replaces the previous file
    assert json.loads(path.read_text(encoding="utf-8")) == {"AP": 0.25, "APs": -1.0}
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary file left
    with pytest.raises(ValueError, match="finite"):
        write_metrics_json(path, {"AP": float("nan")})
    assert json.loads(path.read_text(encoding="utf-8")) == {"AP": 0.25, "APs": -1.0}


def _many_objects_document() -> dict:
    """Two images: 15 objects of two categories on a grid, and 1 object."""
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1 + i % 2,
                    "bbox": [40.0 * (i % 5), 40.0 * (i // 5), 30.0, 30.0]} for i in range(15)]
    annotations.append({"id": 99, "image_id": 2, "category_id": 2, "bbox": [5.0, 5.0, 50.0, 20.0]})
    return {"images": [{"id": 1, "width": 200, "height": 120}, {"id": 2, "width": 64, "height": 64}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": annotations}


def _as_detections(boxes_xywh: list[list[float]], shift: float = 0.0) -> dict[str, torch.Tensor]:
    boxes = torch.tensor(boxes_xywh)
    xyxy = torch.cat((boxes[:, :2] + shift, boxes[:, :2] + boxes[:, 2:] + shift), dim=1)
    scores = torch.linspace(1.0, 0.5, len(boxes))
    return {"boxes": xyxy, "scores": scores, "labels": torch.zeros(len(boxes), dtype=torch.long)}


def test_class_agnostic_recall_ignores_categories_and_counts_the_top_n_boxes() -> None:
    document = _many_objects_document()
    evaluator = CocoEvaluator(document, category_ids=[1, 2])
    for image_id in (1, 2):
        boxes = [a["bbox"] for a in document["annotations"] if a["image_id"] == image_id]
        evaluator.update(image_id, _as_detections(boxes))  # every box labelled category 1: wrong for half
    recall = evaluator.class_agnostic_recall()
    assert recall["AR@30"] == pytest.approx(1.0) and recall["AR@100"] == pytest.approx(1.0)
    assert recall["AR@10"] == pytest.approx(11 / 16)  # 10 of 15 objects in image 1, 1 of 1 in image 2
    assert evaluator.compute()["AP"] < 1.0  # the same boxes are wrong for half the objects with categories


def test_class_agnostic_recall_of_shifted_boxes_is_below_one() -> None:
    document = _many_objects_document()
    evaluator = CocoEvaluator(document, category_ids=[1, 2])
    for image_id in (1, 2):
        boxes = [a["bbox"] for a in document["annotations"] if a["image_id"] == image_id]
        evaluator.update(image_id, _as_detections(boxes, shift=4.0))
    recall = evaluator.class_agnostic_recall()
    assert 0.0 < recall["AR@100"] < 1.0


def _jittered_truth(ground_truth: dict[str, Any], generator: torch.Generator) -> dict[int, dict[str, Tensor]]:
    """Each image's ground-truth boxes moved by a few pixels, every fourth with the next class, random scores."""
    index = {category["id"]: i for i, category in enumerate(ground_truth["categories"])}
    detections: dict[int, dict[str, Tensor]] = {}
    for number, annotation in enumerate(ground_truth["annotations"]):
        x, y, w, h = annotation["bbox"]
        found = detections.setdefault(annotation["image_id"], {"boxes": [], "labels": [], "scores": []})
        found["boxes"].append(torch.tensor([x, y, x + w, y + h]) + 3 * torch.randn(4, generator=generator))
        found["labels"].append((index[annotation["category_id"]] + (number % 4 == 0)) % len(index))
        found["scores"].append(float(torch.rand((), generator=generator)))
    return {image_id: {"boxes": torch.stack(found["boxes"]), "labels": torch.tensor(found["labels"]),
                       "scores": torch.tensor(found["scores"])} for image_id, found in detections.items()}


@pytest.mark.parametrize("source", ["synthetic", "demo"])
def test_faster_coco_eval_gives_the_numbers_of_pycocotools(source: str, demo_data) -> None:
    """All twelve summary numbers and the class-agnostic recall, on a set with crowd boxes and images without
    annotations or detections, and on the demo val set with jittered ground truth as detections."""
    pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is in the test extra")
    if source == "synthetic":
        ground_truth, detections = synthetic_coco_predictions(300, seed=1)
    else:
        ground_truth = json.loads(demo_data.val_json.read_text())
        detections = _jittered_truth(ground_truth, torch.Generator().manual_seed(0))
    category_ids = [category["id"] for category in ground_truth["categories"]]
    scores = []
    for backend in ("pycocotools", "faster-coco-eval"):
        evaluator = CocoEvaluator(ground_truth, category_ids, backend=backend)
        for image_id, found in detections.items():
            evaluator.update(image_id, found)
        scores.append((evaluator.stats(), evaluator.class_agnostic_recall()))
    assert cocoeval_class("faster-coco-eval").__module__.startswith("faster_coco_eval")
    assert 0.0 < scores[0][0][0] < 1.0  # neither trivial nor perfect, so equality means something
    assert scores[1][0] == pytest.approx(scores[0][0], abs=1e-12)
    assert scores[1][1] == pytest.approx(scores[0][1], abs=1e-12)


def test_an_unknown_evaluation_backend_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs the faster-coco-eval package"):
        cocoeval_class("faster-coco-eval")
