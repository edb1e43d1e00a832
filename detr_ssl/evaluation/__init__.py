"""Evaluation: model outputs -> detections (:func:`postprocess`) -> COCO box metrics (:class:`CocoEvaluator`)."""

from detr_ssl.evaluation.coco_eval import METRIC_NAMES, CocoEvaluator, load_coco, write_metrics_json
from detr_ssl.evaluation.postprocess import postprocess

__all__ = ["METRIC_NAMES", "CocoEvaluator", "load_coco", "postprocess", "write_metrics_json"]
