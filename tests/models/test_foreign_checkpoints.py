"""Original Deformable DETR / DetReg / UP-DETR key layouts load into our detector."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.foreign_checkpoints import convert_foreign_state_dict, is_foreign_layout

TINY = replace(model_preset("tiny"), hidden_dim=32, num_heads=2, ffn_dim=32, num_queries=6, backbone="resnet10t")

# Our name -> the original repositories' name, written independently of the converter's rules.
_TO_ORIGINAL = [
    (r"^backbone\.body\.", "backbone.0.body."),
    (r"^level_embed$", "transformer.level_embed"),
    (r"^reference_points\.", "transformer.reference_points."),
    (r"^query_selector\.memory_proj\.0\.", "transformer.enc_output."),
    (r"^query_selector\.memory_proj\.1\.", "transformer.enc_output_norm."),
    (r"^query_selector\.query_proj\.0\.", "transformer.pos_trans."),
    (r"^query_selector\.query_proj\.1\.", "transformer.pos_trans_norm."),
    (r"^encoder\.layers\.(\d+)\.norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.ffn\.net\.0\.", r"transformer.encoder.layers.\1.linear1."),
    (r"^encoder\.layers\.(\d+)\.ffn\.net\.3\.", r"transformer.encoder.layers.\1.linear2."),
    (r"^encoder\.layers\.(\d+)\.ffn\.norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^encoder\.", "transformer.encoder."),
    (r"^decoder\.layers\.(\d+)\.norm_cross\.", r"transformer.decoder.layers.\1.norm1."),
    (r"^decoder\.layers\.(\d+)\.norm_self\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^decoder\.layers\.(\d+)\.ffn\.net\.0\.", r"transformer.decoder.layers.\1.linear1."),
    (r"^decoder\.layers\.(\d+)\.ffn\.net\.3\.", r"transformer.decoder.layers.\1.linear2."),
    (r"^decoder\.layers\.(\d+)\.ffn\.norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^decoder\.layers\.", "transformer.decoder.layers."),
    (r"^decoder\.box_heads\.", "transformer.decoder.bbox_embed."),
    (r"^class_heads\.", "class_embed."),
    (r"^box_heads\.", "bbox_embed."),
]


def _original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith("query_selector.") and ("class_head" in key or "box_head" in key):
            continue  # aliases of the last class/box head, saved once in the original
        for pattern, replacement in _TO_ORIGINAL:
            if re.search(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value.clone()
    return out


@pytest.mark.parametrize("variant", ["base", "two_stage"])
def test_original_deformable_detr_layout_loads_every_tensor(variant: str, tmp_path: Path) -> None:
    cfg = TINY if variant == "base" else replace(TINY, with_box_refine=True, two_stage=True)
    source = build_model(cfg, num_classes=3)
    for param in source.parameters():
        torch.nn.init.normal_(param)
    original = _original_layout(source.state_dict())
    assert is_foreign_layout(original) and not is_foreign_layout(source.state_dict())
    original["feature_embed.layers.0.weight"] = torch.zeros(4, 4)  # DetReg's embedding head: not a detector's
    path = tmp_path / "checkpoint0049.pth"
    torch.save({"model": original, "epoch": 49}, path)

    target = build_model(cfg, num_classes=3)
    missing, dropped = load_pretrained(target, path)
    assert missing == []
    assert dropped == ["embedding_head.layers.0.weight"]  # reported under our DetReg model's name
    for key, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], tensor), key


def test_updetr_detr_checkpoint_contributes_its_backbone(tmp_path: Path) -> None:
    source = build_model(TINY, num_classes=1)
    detr_like = {f"backbone.0.body.{k}": v.clone() + 1 for k, v in source.backbone.body.state_dict().items()}
    detr_like["transformer.encoder.layers.0.self_attn.in_proj_weight"] = torch.zeros(96, 32)  # DETR, not deformable
    path = tmp_path / "up-detr.pth"
    torch.save({"model": detr_like}, path)
    target = build_model(TINY, num_classes=1)
    missing, dropped = load_pretrained(target, path)
    assert dropped == ["encoder.layers.0.self_attn.in_proj_weight"]
    assert not any(k.startswith("backbone.") for k in missing)
    assert torch.equal(target.backbone.body.conv1[0].weight, source.backbone.body.conv1[0].weight + 1)


def test_unknown_keys_pass_through_unchanged() -> None:
    assert convert_foreign_state_dict({"something.else": torch.zeros(1)}).keys() == {"something.else"}
