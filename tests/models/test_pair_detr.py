"""Pair DETR model: two keypoint decoders share one encoder; outputs per layer; boxes from pairs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from detr_ssl.errors import ConfigError
from detr_ssl.models.config import model_preset
from detr_ssl.models.pair_detr import PairDETR, as_detections
from detr_ssl.pairs import pairs_to_boxes

TINY = replace(model_preset("tiny"), hidden_dim=32, num_heads=2, ffn_dim=32, num_queries=6, backbone="resnet10t")


@pytest.mark.parametrize("refine", [False, True])
def test_outputs_every_layer_and_all_parameters_are_trained(refine: bool) -> None:
    model = PairDETR(replace(TINY, with_box_refine=refine), num_classes=3, embed_dim=8)
    images, mask = torch.randn(2, 3, 64, 48), torch.zeros(2, 64, 48, dtype=torch.bool)
    out = model(images, mask)
    assert out.logits.shape == (2, 6, 3)
    assert out.corners.shape == out.centers.shape == (2, 6, 2)
    assert out.corner_embed.shape == out.center_embed.shape == (2, 6, 8)
    assert len(out.aux) == TINY.dec_layers - 1 and not out.aux[0].aux
    loss = sum(o.logits.sum() + o.corners.sum() + o.centers.sum() + o.corner_embed.sum() + o.center_embed.sum()
               for o in [out, *out.aux])
    loss.backward()
    unreached = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unreached == []


def test_the_two_decoders_are_distinct_modules_on_one_encoder() -> None:
    model = PairDETR(TINY, num_classes=2)
    corner_params = {id(p) for p in model.corner_decoder.parameters()}
    assert not corner_params & {id(p) for p in model.detector.decoder.parameters()}
    assert not corner_params & {id(p) for p in model.detector.encoder.parameters()}


def test_detections_are_the_pair_boxes() -> None:
    model = PairDETR(TINY, num_classes=2).eval()
    out = model(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    det = as_detections(out)
    assert torch.allclose(det.boxes, pairs_to_boxes(out.corners, out.centers).clamp(0, 1))
    assert det.logits is out.logits


def test_two_stage_is_refused() -> None:
    with pytest.raises(ConfigError, match="two-stage"):
        PairDETR(replace(TINY, two_stage=True, with_box_refine=True), num_classes=2)


def test_detector_checkpoint_keys_are_shared_with_deformable_detr() -> None:
    """A Pair DETR's `detector.*` weights are a Deformable DETR's, so pretrained detectors load into it."""
    from detr_ssl.models.deformable_detr import build_model

    pair = PairDETR(TINY, num_classes=2)
    plain = build_model(TINY, num_classes=2)
    detector_keys = {k.removeprefix("detector.") for k in pair.state_dict() if k.startswith("detector.")}
    assert detector_keys == set(plain.state_dict())
