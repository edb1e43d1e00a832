"""The Pair DETR criterion: perfect vs perturbed predictions, normalisation, gradients, layers, edge cases."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from detr_ssl.config import LossConfig
from detr_ssl.losses.focal import FocalParams
from detr_ssl.losses.pair_contrastive import pair_infonce
from detr_ssl.losses.pair_criterion import PairLossWeights, PairSetCriterion, build_pair_criterion
from detr_ssl.models.outputs import PairOutput
from detr_ssl.pair_matcher import PairHungarianMatcher

NUM_CLASSES = 3
NUM_QUERIES = 6
EMBED = 8
TERMS = ["loss_center", "loss_cls", "loss_corner", "loss_giou", "loss_pair"]

Targets = list[dict[str, torch.Tensor]]


def make_targets() -> Targets:
    return [
        {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def perfect_output(targets: Targets, confidence: float = 12.0) -> PairOutput:
    """Pairs 0..K-1 hit the targets' keypoints with confident logits and a distinct embedding shared by the
    pair's two queries (orthogonal across the batch); the other queries predict nothing."""
    batch = len(targets)
    logits = torch.full((batch, NUM_QUERIES, NUM_CLASSES), -confidence)
    corners = torch.full((batch, NUM_QUERIES, 2), 0.4)
    centers = torch.full((batch, NUM_QUERIES, 2), 0.5)
    corner_embed = torch.zeros(batch, NUM_QUERIES, EMBED)
    center_embed = torch.zeros(batch, NUM_QUERIES, EMBED)
    object_id = 0
    for image, target in enumerate(targets):
        for query, (label, box) in enumerate(zip(target["labels"], target["boxes"])):
            logits[image, query, label] = confidence
            centers[image, query] = box[:2]
            corners[image, query] = box[:2] - box[2:] / 2
            corner_embed[image, query, object_id] = 1.0
            center_embed[image, query, object_id] = 2.0
            object_id += 1
    return PairOutput(logits, corners, centers, corner_embed, center_embed)


def tensors(output: PairOutput) -> list[torch.Tensor]:
    return [getattr(output, f.name) for f in dataclasses.fields(output) if f.name != "aux"]


def test_perfect_predictions_cost_almost_nothing() -> None:
    targets = make_targets()
    result = PairSetCriterion(NUM_CLASSES)(perfect_output(targets), targets)
    assert sorted(result.terms) == TERMS
    for name in ["loss_corner", "loss_center", "loss_giou"]:
        assert result.terms[name].item() == pytest.approx(0.0, abs=1e-6)
    assert result.terms["loss_cls"].item() < 1e-4
    assert result.terms["loss_pair"].item() < 1e-3  # 3 orthogonal pairs at temperature 0.1: 2 e^-10
    assert result.total.item() < 1e-3
    assert [q.tolist() for q, _ in result.indices] == [[0, 1], [0]]
    assert [t.tolist() for _, t in result.indices] == [[0, 1], [0]]


@pytest.mark.parametrize("perturbation", ["corners", "centers", "logits", "pairing"])
def test_each_perturbation_raises_the_loss(perturbation: str) -> None:
    targets = make_targets()
    criterion = PairSetCriterion(NUM_CLASSES)
    perfect = criterion(perfect_output(targets), targets)
    worse = perfect_output(targets)
    if perturbation == "corners":
        worse.corners += 0.04
        raised = ["loss_corner", "loss_giou"]
    elif perturbation == "centers":
        worse.centers[..., 0] -= 0.04
        raised = ["loss_center", "loss_giou"]
    elif perturbation == "logits":
        worse = perfect_output(targets, confidence=0.5)
        raised = ["loss_cls"]
    else:  # the two objects of image 0 swap center embeddings: each corner now points at the wrong center
        worse.center_embed[0, [0, 1]] = worse.center_embed[0, [1, 0]]
        raised = ["loss_pair"]
    result = criterion(worse, targets)
    assert result.total > perfect.total + 0.1
    for name in raised:
        assert result.terms[name] > perfect.terms[name] + 1e-3


def test_terms_are_normalised_by_the_number_of_boxes() -> None:
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    corners = torch.tensor([[[0.4, 0.4]], [[0.35, 0.4]]])  # image 1: corner 0.05 too far left, box 0.3 x 0.2
    centers = torch.full((2, 1, 2), 0.5)
    embed = torch.eye(2)[:, None]
    output = PairOutput(torch.zeros(2, 1, 1), corners, centers, embed, embed)
    result = PairSetCriterion(1)(output, targets)

    assert result.num_boxes == 2.0
    assert result.terms["loss_corner"].item() == pytest.approx(0.05 / 2, rel=1e-5)
    assert result.terms["loss_center"].item() == pytest.approx(0.0, abs=1e-7)
    iou = 0.04 / 0.06  # the target lies inside the 0.3 x 0.2 prediction, which is also the hull
    assert result.terms["loss_giou"].item() == pytest.approx((1 - iou) / 2, rel=1e-5)
    focal_positive = 0.25 * 0.5**2 * torch.log(torch.tensor(2.0)).item()  # p = 0.5 on both targets
    assert result.terms["loss_cls"].item() == pytest.approx(2 * focal_positive / 2, rel=1e-5)
    assert result.terms["loss_pair"].item() == pytest.approx(float(pair_infonce(torch.eye(2), torch.eye(2))))
    weights = PairLossWeights()
    expected = (weights.cls * result.terms["loss_cls"] + weights.giou * result.terms["loss_giou"]
                + weights.point * (result.terms["loss_corner"] + result.terms["loss_center"])
                + weights.pair * result.terms["loss_pair"])
    torch.testing.assert_close(result.total, expected)


def test_gradients_reach_every_input_of_every_layer() -> None:
    targets = make_targets()
    output = perfect_output(targets, confidence=1.0)
    output.aux = [perfect_output(targets, confidence=1.0)]
    for layer in (output, *output.aux):
        layer.corners += 0.02
        layer.centers -= 0.01
        layer.center_embed += 0.3 * torch.randn(layer.center_embed.shape, generator=torch.Generator().manual_seed(0))
    inputs = [t.requires_grad_() for layer in (output, *output.aux) for t in tensors(layer)]
    PairSetCriterion(NUM_CLASSES)(output, targets).total.backward()
    for tensor in inputs:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_aux_layers_get_their_own_terms_and_matching() -> None:
    targets = make_targets()
    output = perfect_output(targets)
    output.aux = [perfect_output(targets, confidence=1.0), perfect_output(targets, confidence=2.0)]
    output.aux[0].corners = output.aux[0].corners.flip(1)  # the pairs of layer 0 sit at other queries
    output.aux[0].centers = output.aux[0].centers.flip(1)
    output.aux[0].logits = output.aux[0].logits.flip(1)
    output.aux[0].corner_embed = output.aux[0].corner_embed.flip(1)
    output.aux[0].center_embed = output.aux[0].center_embed.flip(1)

    result = PairSetCriterion(NUM_CLASSES)(output, targets)
    assert sorted(result.terms) == sorted(f"{name}{s}" for name in TERMS for s in ["", "_0", "_1"])
    assert result.terms["loss_cls_0"] > result.terms["loss_cls_1"] > result.terms["loss_cls"]
    last = NUM_QUERIES - 1
    assert [q.tolist() for q, _ in result.layer_indices["_0"]] == [[last - 1, last], [last]]
    assert result.indices is result.layer_indices[""]
    weights = PairLossWeights()
    per_term = {"loss_cls": weights.cls, "loss_corner": weights.point, "loss_center": weights.point,
                "loss_giou": weights.giou, "loss_pair": weights.pair}
    expected = sum(per_term[name] * result.terms[f"{name}{s}"] for name in TERMS for s in ["", "_0", "_1"])
    torch.testing.assert_close(result.total, expected)

    without_aux = PairSetCriterion(NUM_CLASSES, aux_loss=False)(output, targets)
    assert sorted(without_aux.terms) == TERMS


def test_images_without_targets() -> None:
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}, make_targets()[1]]
    output = perfect_output(targets, confidence=1.0)
    inputs = [t.requires_grad_() for t in tensors(output)]
    result = PairSetCriterion(NUM_CLASSES)(output, targets)
    result.total.backward()
    assert torch.isfinite(result.total)
    assert result.indices[0][0].numel() == 0
    assert result.terms["loss_pair"].item() == pytest.approx(0.0, abs=1e-7)  # one matched pair: no negative
    assert inputs[0].grad[0].abs().sum() > 0  # the empty image still learns "nothing here"

    all_empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    output = perfect_output(all_empty)
    inputs = [t.requires_grad_() for t in tensors(output)]
    empty_result = PairSetCriterion(NUM_CLASSES)(output, all_empty)
    assert torch.isfinite(empty_result.total)
    assert all(empty_result.terms[name].item() == 0.0 for name in ["loss_corner", "loss_center", "loss_giou",
                                                                     "loss_pair"])
    empty_result.total.backward()
    assert all(t.grad is not None for t in inputs)  # the graph reaches every head, so DDP sees no unused one


def test_custom_weights_temperature_and_focal_params_are_used() -> None:
    targets = make_targets()
    output = perfect_output(targets, confidence=0.5)
    output.center_embed = output.center_embed + 0.5
    default = PairSetCriterion(NUM_CLASSES)(output, targets)

    weights = PairLossWeights(cls=1.0, point=3.0, giou=4.0, pair=0.5)
    criterion = PairSetCriterion(NUM_CLASSES, weights=weights, temperature=0.5)
    matcher_costs = (criterion.matcher.cost_class, criterion.matcher.cost_point, criterion.matcher.cost_giou)
    assert matcher_costs == (1.0, 3.0, 4.0)
    custom = criterion(output, targets)
    assert custom.terms["loss_pair"] != pytest.approx(default.terms["loss_pair"].item())
    torch.testing.assert_close(custom.total, sum(w * custom.terms[k] for w, k in [
        (1.0, "loss_cls"), (3.0, "loss_corner"), (3.0, "loss_center"), (4.0, "loss_giou"), (0.5, "loss_pair")]))

    matcher = PairHungarianMatcher(focal_alpha=0.5)
    half = PairSetCriterion(NUM_CLASSES, matcher=matcher)(output, targets)
    assert matcher.focal == FocalParams(alpha=0.5)
    assert half.terms["loss_cls"] != pytest.approx(default.terms["loss_cls"].item())


def test_build_pair_criterion_shares_weights_and_focal_params() -> None:
    config = LossConfig(cls_weight=1.0, bbox_weight=3.0, giou_weight=4.0, focal_alpha=0.4, focal_gamma=1.0,
                        aux_loss=False)
    criterion = build_pair_criterion(NUM_CLASSES, config, temperature=0.2, pair_weight=0.5)
    assert criterion.weights == PairLossWeights(cls=1.0, point=3.0, giou=4.0, pair=0.5)
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_point, matcher.cost_giou) == (1.0, 3.0, 4.0)
    assert matcher.focal == FocalParams(alpha=0.4, gamma=1.0)
    assert criterion.temperature == 0.2 and not criterion.aux_loss


def test_invalid_arguments_are_rejected() -> None:
    targets = make_targets()
    with pytest.raises(ValueError, match="classes"):
        PairSetCriterion(NUM_CLASSES + 1)(perfect_output(targets), targets)
    bad_embed = perfect_output(targets)
    bad_embed.center_embed = bad_embed.center_embed[..., :4]
    with pytest.raises(ValueError, match="embed"):
        PairSetCriterion(NUM_CLASSES)(bad_embed, targets)
    with pytest.raises(ValueError):
        PairSetCriterion(0)
    with pytest.raises(ValueError):
        PairSetCriterion(NUM_CLASSES, temperature=0.0)


def test_pairing_loss_uses_the_same_matched_query_for_corner_and_center() -> None:
    """Distinct embeddings per query: the loss is low only when the corner and center embeddings of the
    *same* matched query agree, so taking the centers of other queries would be caught."""
    targets = make_targets()
    output = perfect_output(targets)
    torch.manual_seed(0)
    distinct = torch.randn(output.corner_embed.shape) * 10
    aligned = dataclasses.replace(output, corner_embed=distinct, center_embed=distinct.clone())
    rolled = dataclasses.replace(output, corner_embed=distinct, center_embed=distinct.roll(1, dims=1))
    criterion = PairSetCriterion(num_classes=output.logits.shape[-1], aux_loss=False)
    assert criterion(aligned, targets).terms["loss_pair"] < 0.05
    assert criterion(rolled, targets).terms["loss_pair"] > 1.0
