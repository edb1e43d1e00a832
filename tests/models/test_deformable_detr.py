"""The detector: shapes for every variant, gradients, padding invariance, masks and extra queries."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from detr_ssl.models.backbone import Backbone
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.position_encoding import SinePositionEncoding

TINY = replace(model_preset("tiny"), hidden_dim=32, num_heads=2, ffn_dim=32, num_queries=8, backbone="resnet10t")
VARIANTS = {
    "base": TINY,
    "box_refine": replace(TINY, with_box_refine=True),
    "two_stage": replace(TINY, with_box_refine=True, two_stage=True),
    "four_levels": replace(TINY, num_feature_levels=4),
}


def _batch(batch: int = 2, height: int = 64, width: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, height, width)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    mask[-1, :, width // 2:] = True
    images[-1, :, :, width // 2:] = 0
    return images, mask


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_output_shapes_and_ranges(name: str) -> None:
    cfg = VARIANTS[name]
    model = build_model(cfg, num_classes=3).eval()
    images, mask = _batch()
    out = model(images, mask)
    assert out.logits.shape == (2, cfg.num_queries, 3)
    assert out.boxes.shape == (2, cfg.num_queries, 4)
    assert ((out.boxes >= 0) & (out.boxes <= 1)).all()
    assert len(out.aux) == cfg.dec_layers - 1
    assert out.hidden_states.shape == (cfg.dec_layers, 2, cfg.num_queries, cfg.hidden_dim)
    assert (out.encoder is not None) == cfg.two_stage
    if cfg.two_stage:
        assert out.encoder.logits.shape[-1] == 3 and out.encoder.boxes.shape[-1] == 4


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_trainable_parameter_is_in_the_graph(name: str) -> None:
    # Zero-initialised layers (box head output, sampling offsets) make some gradients exactly zero at
    # init, so the check is that every parameter is reached by autograd, not that its gradient is non-zero.
    cfg = VARIANTS[name]
    model = build_model(cfg, num_classes=3)
    images, mask = _batch()
    out = model(images, mask)
    loss = out.logits.sum() + out.boxes.sum() + sum(a.logits.sum() + a.boxes.sum() for a in out.aux)
    if out.encoder is not None:
        finite = torch.isfinite(out.encoder.boxes)
        loss = loss + out.encoder.logits.sum() + out.encoder.boxes[finite].sum()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_padding_does_not_change_predictions() -> None:
    model = build_model(TINY, num_classes=3).eval()
    torch.manual_seed(1)
    image = torch.randn(1, 3, 64, 48)
    alone = model(image, torch.zeros(1, 64, 48, dtype=torch.bool))
    padded = torch.zeros(1, 3, 64, 80)
    padded[..., :48] = image
    mask = torch.ones(1, 64, 80, dtype=torch.bool)
    mask[..., :48] = False
    with_padding = model(padded, mask)
    # Only the encoder's convolutions see the zero padding at the right border (GroupNorm statistics and
    # border taps), so the match is close rather than exact.
    assert torch.allclose(alone.boxes, with_padding.boxes, atol=0.05)


def test_query_extra_and_self_attention_mask_change_the_output() -> None:
    model = build_model(TINY, num_classes=2).eval()
    images, mask = _batch(batch=1)
    plain = model(images, mask)
    extra = torch.randn(1, TINY.num_queries, TINY.hidden_dim)
    assert not torch.allclose(model(images, mask, query_extra=extra).logits, plain.logits)
    block = torch.ones(TINY.num_queries, TINY.num_queries, dtype=torch.bool)
    block.fill_diagonal_(False)  # every query attends to itself only
    isolated = model(images, mask, self_attn_mask=block)
    assert not torch.allclose(isolated.logits, plain.logits)


def test_frozen_backbone_has_no_trainable_parameters() -> None:
    model = build_model(replace(TINY, train_backbone=False), num_classes=2)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert any(p.requires_grad for p in model.encoder.parameters())


@pytest.mark.parametrize("frozen_stages", [0, 1, 2])
def test_stem_and_first_stages_stay_frozen_as_configured(frozen_stages: int) -> None:
    model = build_model(replace(TINY, backbone_frozen_stages=frozen_stages), num_classes=3)
    images, mask = _batch()
    model(images, mask).logits.sum().backward()
    for name, param in model.backbone.body.named_parameters():
        stage = 0 if name.startswith(("conv1", "bn1")) else int(name[len("layer")])
        trained = frozen_stages == 0 or stage > frozen_stages  # 0 trains the stem too
        assert param.requires_grad == trained, name
        assert (param.grad is not None) == trained, name


def test_position_encoding_ignores_padding() -> None:
    encode = SinePositionEncoding(8)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    padded = torch.ones(1, 4, 9, dtype=torch.bool)
    padded[..., :6] = False
    assert torch.allclose(encode(mask), encode(padded)[..., :6])


def test_backbone_weights_load_from_local_file(tmp_path) -> None:
    source = Backbone("resnet10t", "frozen_bn", num_levels=3)
    torch.nn.init.normal_(source.body.conv1[0].weight)
    path = tmp_path / "resnet10t.pth"
    state = {f"module.{k}": v for k, v in source.body.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, 512)  # a classifier the detector does not use
    torch.save(state, path)
    loaded = Backbone("resnet10t", "frozen_bn", num_levels=3, weights=path)
    assert torch.equal(loaded.body.conv1[0].weight, source.body.conv1[0].weight)
