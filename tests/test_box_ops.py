"""Box conversions and overlaps, checked against hand-computed values and a scalar reference."""

from __future__ import annotations

import pytest
import torch

from detr_ssl import box_ops


def random_xyxy(n: int, generator: torch.Generator) -> torch.Tensor:
    top_left = torch.rand(n, 2, generator=generator)
    return torch.cat((top_left, top_left + torch.rand(n, 2, generator=generator)), dim=-1)


def reference_giou(a: list[float], b: list[float]) -> float:
    """GIoU of two xyxy boxes, written out coordinate by coordinate."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_conversions_known_values_and_round_trips() -> None:
    cxcywh = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    xyxy = torch.tensor([[0.4, 0.1, 0.6, 0.7]])
    torch.testing.assert_close(box_ops.cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(box_ops.xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(box_ops.xyxy_to_xywh(torch.tensor([10.0, 20.0, 40.0, 30.0])),
                               torch.tensor([10.0, 20.0, 30.0, 10.0]))

    generator = torch.Generator().manual_seed(0)
    boxes = random_xyxy(50, generator).view(5, 10, 4)  # any leading shape
    torch.testing.assert_close(box_ops.cxcywh_to_xyxy(box_ops.xyxy_to_cxcywh(boxes)), boxes)
    torch.testing.assert_close(box_ops.xywh_to_xyxy(box_ops.xyxy_to_xywh(boxes)), boxes)


def test_box_area() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0]])
    torch.testing.assert_close(box_ops.box_area(boxes), torch.tensor([6.0, 0.0]))


def test_iou_and_giou_known_values() -> None:
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    identical = unit.clone()
    disjoint = torch.tensor([[2.0, 0.0, 3.0, 1.0]])  # hull 3, union 2 -> GIoU = 0 - 1/3
    half = torch.tensor([[0.5, 0.0, 1.5, 1.0]])  # inter 0.5, union 1.5, hull 1.5 -> IoU = GIoU = 1/3
    others = torch.cat((identical, disjoint, half))

    torch.testing.assert_close(box_ops.box_iou(unit, others), torch.tensor([[1.0, 0.0, 1 / 3]]))
    giou = box_ops.generalized_box_iou(unit, others)
    torch.testing.assert_close(giou, torch.tensor([[1.0, -1 / 3, 1 / 3]]))
    assert giou[0, 1] < 0

    # Hand-computed: a = (0,0,4,4), b = (2,2,6,5): inter 2*2=4, union 16+12-4=24, hull 6*5=30.
    a, b = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[2.0, 2.0, 6.0, 5.0]])
    expected = 4 / 24 - (30 - 24) / 30
    torch.testing.assert_close(box_ops.generalized_box_iou(a, b), torch.tensor([[expected]]))


def test_pairwise_and_elementwise_agree_with_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    boxes1, boxes2 = random_xyxy(6, generator), random_xyxy(4, generator)
    expected = torch.tensor([[reference_giou(a, b) for b in boxes2.tolist()] for a in boxes1.tolist()])
    torch.testing.assert_close(box_ops.generalized_box_iou(boxes1, boxes2), expected)

    paired = random_xyxy(6, generator)
    torch.testing.assert_close(box_ops.elementwise_generalized_box_iou(boxes1, paired),
                               box_ops.generalized_box_iou(boxes1, paired).diagonal())
    torch.testing.assert_close(box_ops.elementwise_box_iou(boxes1, paired),
                               box_ops.box_iou(boxes1, paired).diagonal())


def test_degenerate_boxes_stay_finite() -> None:
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert torch.isfinite(box_ops.generalized_box_iou(point, point)).all()


@pytest.mark.parametrize("bad, reason", [
    (torch.tensor([[0.6, 0.0, 0.4, 1.0]]), "x1 < x0"),
    (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), "NaN"),
])
def test_invalid_boxes_are_rejected(bad: torch.Tensor, reason: str) -> None:
    ok = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=reason):
        box_ops.generalized_box_iou(ok, bad)
    with pytest.raises(ValueError, match=reason):
        box_ops.box_iou(bad, ok)


def test_elementwise_needs_equal_shapes() -> None:
    with pytest.raises(ValueError, match="equal shapes"):
        box_ops.elementwise_generalized_box_iou(torch.zeros(3, 4), torch.zeros(1, 4))
