"""transformers' DeformableDetrForObjectDetection checkpoints load into our detector and compute the same."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.transformers_interop import build_transformers_detector, transformers_config

pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")

BASE = replace(model_preset("tiny"), backbone="resnet18", backbone_norm="frozen_bn", backbone_frozen_stages=1,
               hidden_dim=32, num_heads=2, ffn_dim=32, num_queries=7, num_feature_levels=4)
VARIANTS = {"base": BASE, "box_refine": replace(BASE, with_box_refine=True),
            "two_stage": replace(BASE, with_box_refine=True, two_stage=True)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_checkpoint_gives_identical_detections(variant: str, tmp_path: Path) -> None:
    config = VARIANTS[variant]
    torch.manual_seed(0)
    theirs = build_transformers_detector(config, num_classes=5).eval()
    path = tmp_path / "pytorch_model.pth"
    torch.save(theirs.state_dict(), path)
    ours = build_model(config, num_classes=5).eval()

    missing, dropped = load_pretrained(ours, path)

    assert (missing, dropped) == ([], [])
    images = torch.randn(2, 3, 96, 128)
    padding = torch.zeros(2, 96, 128, dtype=torch.bool)
    padding[1, :, 100:] = True
    padding[1, 80:] = True
    with torch.no_grad():
        mine = ours(images, padding)
        reference = theirs(pixel_values=images, pixel_mask=(~padding).long())
    torch.testing.assert_close(mine.logits, reference.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.boxes, reference.pred_boxes, rtol=1e-5, atol=1e-5)


def test_transformers_peer_freezes_what_we_freeze() -> None:
    theirs = build_transformers_detector(BASE, num_classes=3)
    ours = build_model(BASE, num_classes=3)
    trainable = [sum(p.numel() for p in model.parameters() if p.requires_grad) for model in (theirs, ours)]
    assert trainable[0] == trainable[1]
    assert not theirs.model.backbone.model.layer1[0].conv1.weight.requires_grad
    assert theirs.model.backbone.model.layer2[0].conv1.weight.requires_grad


def test_group_norm_backbone_has_no_transformers_counterpart() -> None:
    with pytest.raises(ValueError, match="frozen-BN"):
        transformers_config(model_preset("tiny"), num_classes=3)
