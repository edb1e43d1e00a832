"""COCO box AP with pycocotools: accumulate detections per image, score them, write the metrics.

pycocotools prints progress on every call; the evaluator captures that output unless ``verbose``. The
``faster-coco-eval`` backend (the optional package of that name) runs the same evaluation in C++ on the
same pycocotools indices and gives the same numbers (tested); ``scripts/bench_coco_eval.py`` times both.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from detr_ssl.atomic_io import atomic_write_json
from detr_ssl.box_ops import xyxy_to_xywh
from detr_ssl.config import EvalBackend
from detr_ssl.errors import ConfigError, DataError

__all__ = ["AGNOSTIC_MAX_DETS", "METRIC_NAMES", "CocoEvaluator", "EvalBackend", "cocoeval_class", "load_coco",
           "write_metrics_json"]

#: Keys of :meth:`CocoEvaluator.compute`, in the order of ``COCOeval.stats[:6]``.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: Detections per image at which :meth:`CocoEvaluator.class_agnostic_recall` reports recall (as DetReg does).
AGNOSTIC_MAX_DETS = (10, 30, 100)


def cocoeval_class(backend: EvalBackend) -> type:
    """The ``COCOeval`` implementation of ``backend`` (ConfigError when its package is not installed)."""
    if backend == "pycocotools":
        return COCOeval
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        raise ConfigError("--eval-backend faster-coco-eval needs the faster-coco-eval package: "
                          "pip install 'detr-ssl[fast-eval]'") from None
    return COCOeval_faster


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Swallows pycocotools' prints unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def load_coco(source: COCO | Mapping[str, Any] | str | Path, verbose: bool = False) -> COCO:
    """A pycocotools index of ground truth given as a ``COCO`` object, an in-memory dict or a JSON path.

    Dicts are copied, and their annotations get the ``area`` (box area) and ``iscrowd`` (0) that COCOeval
    reads but hand-written documents often leave out. A ``COCO`` object is used as it is.
    """
    if isinstance(source, COCO):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: annotation file not found")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a JSON file ({error})") from error
        if not isinstance(document, dict):
            raise DataError(f"{path}: expected a COCO JSON object, got {type(document).__name__}")
    else:
        document = copy.deepcopy(dict(source))
    document.setdefault("annotations", [])
    for annotation in document["annotations"]:
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    coco = COCO()
    coco.dataset = document
    with _quiet(verbose):
        coco.createIndex()
    return coco


class CocoEvaluator:
    """Collects detections image by image, then scores them with pycocotools' ``COCOeval`` (bbox).

    Args:
        ground_truth: ``COCO`` object, COCO-format dict, or path to a COCO JSON.
        category_ids: ``category_ids[i]`` is the COCO category id of contiguous label ``i``.
        verbose: let pycocotools print (its summary table included).

    Only images passed to :meth:`update` are scored (a partial pass is scored on what it saw). An
    evaluator that saw no image at all scores every ground-truth image with no detections (AP 0).

    >>> import torch
    >>> gt = {"images": [{"id": 7, "width": 100, "height": 80}], "categories": [{"id": 3, "name": "cat"}],
    ...       "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 40]}]}
    >>> evaluator = CocoEvaluator(gt, category_ids=[3])
    >>> evaluator.update(7, {"scores": torch.tensor([0.9]), "labels": torch.tensor([0]),
    ...                      "boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]])})
    >>> round(evaluator.compute()["AP50"], 6)
    1.0
    """

    def __init__(self, ground_truth: COCO | Mapping[str, Any] | str | Path, category_ids: Sequence[int],
                 verbose: bool = False, backend: EvalBackend = "pycocotools") -> None:
        self.verbose = verbose
        self._cocoeval = cocoeval_class(backend)
        self.coco = load_coco(ground_truth, verbose)
        self.category_ids = [int(c) for c in category_ids]
        unknown = sorted(set(self.category_ids) - set(self.coco.getCatIds()))
        if unknown:
            raise ValueError(f"category ids {unknown} are not categories of the ground truth")
        self._detections: dict[int, list[dict[str, Any]]] = {}

    def reset(self) -> None:
        """Forgets every detection (to reuse the evaluator for another pass)."""
        self._detections.clear()

    def update(self, image_id: int, detections: Mapping[str, Tensor]) -> None:
        """Records the detections of one image, replacing any recorded before for it.

        Args:
            image_id: COCO image id.
            detections: ``scores (k,)``, ``labels (k,)`` contiguous indices, ``boxes (k, 4)`` absolute
                xyxy of the original image (what :func:`~detr_ssl.evaluation.postprocess` returns);
                other keys are ignored. ``k`` may be 0.
        """
        image_id = int(image_id)
        if image_id not in self.coco.imgs:
            raise ValueError(f"image id {image_id} is not in the ground truth")
        labels = detections["labels"].detach().cpu().long()
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.category_ids)):
            raise ValueError(f"labels must be in [0, {len(self.category_ids)}), got {labels.tolist()}")
        boxes = xyxy_to_xywh(detections["boxes"].detach().cpu().double().reshape(-1, 4))
        scores = detections["scores"].detach().cpu().double()
        self._detections[image_id] = [
            {"image_id": image_id, "category_id": self.category_ids[label], "bbox": box, "score": score,
             "area": box[2] * box[3], "iscrowd": 0}
            for label, box, score in zip(labels.tolist(), boxes.tolist(), scores.tolist())
        ]

    def _results(self) -> COCO:
        """The recorded detections as a pycocotools result index (built directly rather than through
        ``COCO.loadRes``, which rejects an empty list)."""
        annotations = [dict(det, id=i) for i, det in enumerate(
            (det for dets in self._detections.values() for det in dets), start=1)]
        results = COCO()
        results.dataset = {"images": list(self.coco.dataset["images"]),
                           "categories": copy.deepcopy(self.coco.dataset["categories"]),
                           "annotations": annotations}
        with _quiet(self.verbose):
            results.createIndex()
        return results

    def compute(self, cat_ids: Sequence[int] | None = None) -> dict[str, float]:
        """COCO box metrics of the recorded detections.

        Args:
            cat_ids: COCO category ids to score (e.g. the few-shot novel classes); default all.
        Returns:
            ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as floats in ``[0, 1]``. As in pycocotools, a
            metric with no ground-truth object to score (e.g. ``APs`` without small objects) is ``-1.0``;
            it is not NaN so the dict stays valid JSON.
        """
        return {name: float(value) for name, value in zip(METRIC_NAMES, self.stats(cat_ids)[: len(METRIC_NAMES)])}

    def stats(self, cat_ids: Sequence[int] | None = None) -> list[float]:
        """All twelve numbers of COCO's box summary (AP at the IoU and area ranges, then AR at 1 / 10 / 100
        detections and per area), as ``COCOeval.stats``; :meth:`compute` names the first six."""
        evaluation = self._cocoeval(self.coco, self._results(), "bbox")
        evaluation.params.imgIds = sorted(self._detections) or sorted(self.coco.getImgIds())
        if cat_ids is not None:
            unknown = sorted(set(cat_ids) - set(self.coco.getCatIds()))
            if unknown or not cat_ids:
                raise ValueError(f"cat_ids must be a non-empty subset of the ground-truth categories; "
                                 f"unknown: {unknown}")
            evaluation.params.catIds = sorted(int(c) for c in cat_ids)
        with _quiet(self.verbose):
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return [float(value) for value in evaluation.stats]

    def class_agnostic_recall(self, max_dets: Sequence[int] = AGNOSTIC_MAX_DETS) -> dict[str, float]:
        """``{"AR@10": ..., "AR@30": ..., "AR@100": ...}``: recall of the recorded boxes against every
        ground-truth object whatever its category (pycocotools with ``useCats = 0``), averaged over IoU
        0.50:0.95, for the ``n`` highest-scoring boxes of each image; how a label-free pretext's boxes are
        judged. -1.0 when the ground truth has no object."""
        evaluation = self._cocoeval(self.coco, self._results(), "bbox")
        evaluation.params.imgIds = sorted(self._detections) or sorted(self.coco.getImgIds())
        evaluation.params.useCats = 0
        evaluation.params.maxDets = sorted(int(n) for n in max_dets)
        with _quiet(self.verbose):
            evaluation.evaluate()
            evaluation.accumulate()
        recall = evaluation.eval["recall"][:, 0, 0, :]  # (IoU thresholds, maxDets): one class, area "all"
        result = {}
        for index, count in enumerate(evaluation.params.maxDets):
            valid = recall[:, index][recall[:, index] > -1]
            result[f"AR@{count}"] = float(valid.mean()) if len(valid) else -1.0
        return result


def write_metrics_json(path: str | Path, metrics: Mapping[str, float]) -> None:
    """Writes ``metrics`` as JSON atomically: a temporary file in the same folder, then ``os.replace``,
    so a reader never sees a half-written file. Non-finite values are rejected (JSON has no NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise ValueError(f"{path}: metrics must be finite to be written as JSON, got {bad}")
    atomic_write_json(path, dict(metrics), indent=2)
