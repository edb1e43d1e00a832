"""The set criterion: focal loss against torchvision's, normalisation, layers, gradients, edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torchvision.ops import sigmoid_focal_loss as torchvision_focal

from detr_ssl import distributed
from detr_ssl.config import LossConfig
from detr_ssl.losses import FocalParams, LossWeights, SetCriterion, build_criterion, sigmoid_focal_loss
from detr_ssl.losses import set_criterion as set_criterion_module
from detr_ssl.matcher import HungarianMatcher
from detr_ssl.models.outputs import DetectionOutput

NUM_CLASSES = 3
NUM_QUERIES = 6


def make_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def perfect_output(targets: list[dict[str, torch.Tensor]], confidence: float = 12.0) -> DetectionOutput:
    """Queries 0..K-1 predict the targets exactly with confident logits; the others predict nothing."""
    logits = torch.full((len(targets), NUM_QUERIES, NUM_CLASSES), -confidence)
    boxes = torch.full((len(targets), NUM_QUERIES, 4), 0.5)
    for image, target in enumerate(targets):
        for query, (label, box) in enumerate(zip(target["labels"], target["boxes"])):
            logits[image, query, label] = confidence
            boxes[image, query] = box
    return DetectionOutput(logits=logits, boxes=boxes)


def test_focal_loss_matches_torchvision() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 5, generator=generator) * 3
    targets = torch.rand(4, 7, 5, generator=generator) > 0.8
    ours = sigmoid_focal_loss(logits, targets, FocalParams(alpha=0.3, gamma=1.5))
    expected = torchvision_focal(logits, targets.float(), alpha=0.3, gamma=1.5, reduction="none")
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_perfect_predictions_cost_almost_nothing_and_perturbations_more() -> None:
    targets = make_targets()
    criterion = SetCriterion(NUM_CLASSES)
    perfect = criterion(perfect_output(targets), targets)
    assert perfect.total.item() < 1e-4
    assert perfect.terms["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert perfect.terms["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)

    shifted = perfect_output(targets)
    shifted.boxes[:, :, :2] += 0.05
    unsure = perfect_output(targets, confidence=0.5)
    assert criterion(shifted, targets).total > perfect.total + 0.1
    assert criterion(unsure, targets).total > perfect.total + 0.1


def test_terms_are_normalised_by_the_number_of_boxes() -> None:
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    logits = torch.zeros(2, 1, 1)
    boxes = torch.tensor([[[0.6, 0.5, 0.2, 0.2]], [[0.5, 0.5, 0.2, 0.2]]])  # one box off by 0.1 in x
    result = SetCriterion(1)(DetectionOutput(logits=logits, boxes=boxes), targets)

    assert result.terms["loss_bbox"].item() == pytest.approx(0.1 / 2, rel=1e-5)
    giou = 1 / 3  # overlap 0.1 x 0.2 of union 0.06: IoU 1/3; hull 0.3 x 0.2 equals the union
    assert result.terms["loss_giou"].item() == pytest.approx((1 - giou) / 2, rel=1e-5)
    focal_positive = 0.25 * 0.5**2 * torch.log(torch.tensor(2.0)).item()  # p = 0.5 on both targets
    assert result.terms["loss_cls"].item() == pytest.approx(2 * focal_positive / 2, rel=1e-5)
    weights = LossWeights()
    expected_total = sum(w * result.terms[k] for w, k in [(weights.cls, "loss_cls"), (weights.bbox, "loss_bbox"),
                                                          (weights.giou, "loss_giou")])
    torch.testing.assert_close(result.total, expected_total)


def test_box_count_is_averaged_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2 processes holding 3 and 5 boxes, every process divides by (3 + 5) / 2 = 4."""
    monkeypatch.setattr(set_criterion_module, "world_size", lambda: 2)
    monkeypatch.setattr(set_criterion_module, "all_reduce_sum", lambda local: local + 5.0)
    targets = [{"labels": torch.zeros(3, dtype=torch.int64), "boxes": torch.rand(3, 4)}]
    assert set_criterion_module.count_boxes(targets, torch.device("cpu")) == 4.0
    monkeypatch.setattr(set_criterion_module, "all_reduce_sum", lambda local: local)
    assert set_criterion_module.count_boxes([{"boxes": torch.zeros(0, 4)}], torch.device("cpu")) == 1.0


def test_gradients_reach_logits_and_boxes() -> None:
    targets = make_targets()
    output = perfect_output(targets, confidence=1.0)
    output.boxes[:, :, :2] += 0.03
    logits = output.logits.requires_grad_()
    boxes = output.boxes.requires_grad_()
    SetCriterion(NUM_CLASSES)(output, targets).total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert boxes.grad is not None and boxes.grad.abs().sum() > 0
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()


def test_aux_and_encoder_layers_get_their_own_terms() -> None:
    targets = make_targets()
    output = perfect_output(targets)
    output.aux = [perfect_output(targets, confidence=1.0), perfect_output(targets, confidence=2.0)]
    # Class-agnostic proposals: confident on class 0 where objects are, whatever their real class.
    encoder = perfect_output([{**t, "labels": torch.zeros_like(t["labels"])} for t in targets])
    output.encoder = encoder

    result = SetCriterion(NUM_CLASSES)(output, targets)
    for suffix in ["", "_0", "_1", "_enc"]:
        for name in ["loss_cls", "loss_bbox", "loss_giou"]:
            assert f"{name}{suffix}" in result.terms
    assert result.terms["loss_cls_enc"].item() < 1e-4  # labels were set to 0 for the encoder
    assert result.terms["loss_cls_0"] > result.terms["loss_cls_1"] > result.terms["loss_cls"]
    weights = LossWeights()
    expected_total = sum(w * result.terms[f"{k}{s}"] for s in ["", "_0", "_1", "_enc"]
                         for w, k in [(weights.cls, "loss_cls"), (weights.bbox, "loss_bbox"),
                                      (weights.giou, "loss_giou")])
    torch.testing.assert_close(result.total, expected_total)

    without_aux = SetCriterion(NUM_CLASSES, aux_loss=False)(output, targets)
    assert sorted(without_aux.terms) == ["loss_bbox", "loss_cls", "loss_giou"]


def test_images_without_targets() -> None:
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               make_targets()[1]]
    output = perfect_output(targets, confidence=1.0)
    logits = output.logits.requires_grad_()
    result = SetCriterion(NUM_CLASSES)(output, targets)
    result.total.backward()
    assert torch.isfinite(result.total)
    assert result.indices[0][0].numel() == 0
    assert logits.grad[0].abs().sum() > 0  # the empty image still learns "nothing here"

    all_empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    empty_result = SetCriterion(NUM_CLASSES)(perfect_output(all_empty), all_empty)
    assert empty_result.terms["loss_bbox"].item() == 0.0
    assert torch.isfinite(empty_result.total)


def test_indices_are_the_final_layer_matching() -> None:
    targets = make_targets()
    output = perfect_output(targets)
    result = SetCriterion(NUM_CLASSES)(output, targets)
    assert [q.tolist() for q, _ in result.indices] == [[0, 1], [0]]
    assert [t.tolist() for _, t in result.indices] == [[0, 1], [0]]


def test_build_criterion_shares_weights_and_focal_params() -> None:
    config = LossConfig(cls_weight=1.0, bbox_weight=3.0, giou_weight=4.0, focal_alpha=0.4, focal_gamma=1.0,
                        aux_loss=False)
    criterion = build_criterion(NUM_CLASSES, config)
    assert criterion.weights == LossWeights(cls=1.0, bbox=3.0, giou=4.0)
    assert (criterion.matcher.cost_class, criterion.matcher.cost_bbox, criterion.matcher.cost_giou) == (1.0, 3.0, 4.0)
    assert criterion.matcher.focal == FocalParams(alpha=0.4, gamma=1.0)
    assert not criterion.aux_loss


def test_custom_matcher_focal_params_drive_the_loss() -> None:
    targets = make_targets()
    output = perfect_output(targets, confidence=0.5)
    default = SetCriterion(NUM_CLASSES)(output, targets).terms["loss_cls"]
    alpha_half = SetCriterion(NUM_CLASSES, HungarianMatcher(focal_alpha=0.5))(output, targets).terms["loss_cls"]
    assert not torch.isclose(default, alpha_half)


def test_class_count_mismatch_is_reported() -> None:
    targets = make_targets()
    with pytest.raises(ValueError, match="classes"):
        SetCriterion(NUM_CLASSES + 1)(perfect_output(targets), targets)


def test_distributed_helpers_in_a_real_one_process_group(tmp_path: Path) -> None:
    assert not distributed.is_distributed() and distributed.world_size() == 1
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert distributed.is_distributed() and distributed.world_size() == 1
        local = torch.tensor(3.0)
        assert distributed.all_reduce_sum(local).item() == 3.0
        assert local.item() == 3.0  # the input is not modified in place
        assert set_criterion_module.count_boxes(make_targets(), torch.device("cpu")) == 3.0
    finally:
        dist.destroy_process_group()


def test_no_object_weight_scales_only_unmatched_queries() -> None:
    torch.manual_seed(0)
    output = DetectionOutput(logits=torch.randn(1, 6, 1), boxes=torch.rand(1, 6, 4) * 0.5 + 0.25)
    targets = [{"labels": torch.zeros(1, dtype=torch.int64), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    full = SetCriterion(1, aux_loss=False)(output, targets)
    down = SetCriterion(1, aux_loss=False, no_object_weight=0.1)(output, targets)
    assert torch.equal(full.indices[0][0], down.indices[0][0])
    assert down.terms["loss_cls"] < full.terms["loss_cls"]
    assert torch.equal(down.terms["loss_bbox"], full.terms["loss_bbox"])
    assert set(full.layer_indices) == {""}
