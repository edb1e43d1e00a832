"""A detector built from scratch starts where the original Deformable DETR starts.

The original (fundamentalvision/Deformable-DETR) draws every transformer weight matrix Xavier-uniform,
lets each deformable attention redo its own initialisation, shares one class/box head pair between the
decoder layers unless boxes are refined, and puts a (w, h) bias of -2 on the first box head only, none
with two-stage.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import DeformableDETR, build_model
from detr_ssl.models.msda import MSDeformAttn

TINY = model_preset("tiny")
VARIANTS = {
    "base": TINY,
    "box_refine": replace(TINY, with_box_refine=True),
    "two_stage": replace(TINY, two_stage=True),
    "refine_two_stage": replace(TINY, with_box_refine=True, two_stage=True),
}
NUM_CLASSES = 3
# (w, h) bias of each box head: decoder layers first, then the two-stage proposal head.
SIZE_BIASES = {
    "base": [-2.0, -2.0],
    "box_refine": [-2.0, 0.0],
    "two_stage": [0.0, 0.0, 0.0],
    "refine_two_stage": [0.0, 0.0, 0.0],
}
# Parameters of the original's DeformableTransformer, in our naming (the heads the decoder and the
# two-stage selector refer to are not among them).
TRANSFORMER_PREFIXES = ("encoder.", "decoder.layers.", "query_selector.memory_proj.", "query_selector.query_proj.",
                        "reference_points.")
MSDA_ZERO_INIT = ("sampling_offsets.weight", "attention_weights.weight")


@pytest.fixture(scope="module", params=list(VARIANTS))
def built(request: pytest.FixtureRequest) -> tuple[str, DeformableDETR]:
    torch.manual_seed(0)
    return request.param, build_model(VARIANTS[request.param], NUM_CLASSES)


def xavier_bound(weight: torch.Tensor) -> float:
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    return math.sqrt(6.0 / (fan_in + fan_out))


def test_box_head_size_biases(built: tuple[str, DeformableDETR]) -> None:
    name, model = built
    heads = list(model.box_heads)
    assert len(heads) == len(SIZE_BIASES[name])
    for index, (head, size_bias) in enumerate(zip(heads, SIZE_BIASES[name])):
        last = head.layers[-1]
        assert torch.equal(last.weight, torch.zeros_like(last.weight)), index
        assert last.bias.tolist() == [0.0, 0.0, size_bias, size_bias], index
    if model.config.two_stage:
        assert model.query_selector.box_head.layers[-1].bias.tolist() == [0.0] * 4


def test_heads_are_shared_unless_boxes_are_refined(built: tuple[str, DeformableDETR]) -> None:
    name, model = built
    config = model.config
    count = config.dec_layers + (1 if config.two_stage else 0)
    for heads in (model.class_heads, model.box_heads):
        assert len(heads) == count
        distinct = {id(head) for head in heads}
        assert len(distinct) == (count if config.with_box_refine else 1), name
    if config.with_box_refine:  # copies of one head: equal values, separate tensors
        first, second = model.class_heads[0], model.class_heads[1]
        assert torch.equal(first.weight, second.weight)
        assert first.weight.data_ptr() != second.weight.data_ptr()
    assert model.decoder.box_heads is model.box_heads
    if config.two_stage:
        assert model.query_selector.class_head is model.class_heads[-1]
        assert model.query_selector.box_head is model.box_heads[-1]


def test_transformer_weights_are_xavier_uniform(built: tuple[str, DeformableDETR]) -> None:
    _, model = built
    checked = []
    for key, param in model.named_parameters(remove_duplicate=False):
        if param.dim() < 2 or not key.startswith(TRANSFORMER_PREFIXES) or key.endswith(MSDA_ZERO_INIT):
            continue
        bound = xavier_bound(param)
        largest = param.abs().max().item()
        # Uniform on [-bound, bound]: nothing beyond it and, with hundreds of draws, something near it
        # (PyTorch's default for a Linear has bound 1/sqrt(fan_in), at most 0.71 of Xavier's here).
        assert largest <= bound, key
        assert largest >= 0.9 * bound, (key, largest, bound)
        checked.append(key)
    expected_kinds = ["ffn.net.0.weight", "ffn.net.3.weight", "self_attn.in_proj_weight", "self_attn.out_proj.weight",
                      "value_proj.weight", "output_proj.weight"]
    for kind in expected_kinds:
        assert any(key.endswith(kind) for key in checked), kind
    if model.config.two_stage:
        assert {"query_selector.memory_proj.0.weight", "query_selector.query_proj.0.weight"} <= set(checked)
    else:
        assert "reference_points.weight" in checked
        assert torch.equal(model.reference_points.bias, torch.zeros(2))


def test_deformable_attention_keeps_its_own_initialisation(built: tuple[str, DeformableDETR]) -> None:
    _, model = built
    layers = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    assert len(layers) == model.config.enc_layers + model.config.dec_layers
    for layer in layers:
        fresh = MSDeformAttn(layer.d_model, layer.n_levels, layer.n_heads, layer.n_points, backend="pytorch")
        assert not layer.sampling_offsets.weight.any()
        assert torch.equal(layer.sampling_offsets.bias, fresh.sampling_offsets.bias)
        assert not layer.attention_weights.weight.any()
        assert not layer.attention_weights.bias.any()
        for projection in (layer.value_proj, layer.output_proj):
            assert not projection.bias.any()
            assert projection.weight.abs().max() <= xavier_bound(projection.weight)


def test_ffn_biases_keep_pytorch_defaults(built: tuple[str, DeformableDETR]) -> None:
    _, model = built
    linear = model.encoder.layers[0].ffn.net[0]
    assert linear.bias.any()
    assert linear.bias.abs().max() <= 1 / math.sqrt(linear.in_features)


def test_heads_queries_and_level_embedding(built: tuple[str, DeformableDETR]) -> None:
    _, model = built
    prior_bias = -math.log(99)
    for head in model.class_heads:
        torch.testing.assert_close(head.bias, torch.full((NUM_CLASSES,), prior_bias))
    # The heads are not part of the transformer's Xavier pass: PyTorch's Linear default stays.
    for head in model.box_heads:
        for linear in head.layers[:-1]:
            assert linear.weight.abs().max() <= 1 / math.sqrt(linear.in_features)
    level_embed = model.level_embed.detach()
    assert torch.isfinite(level_embed).all() and level_embed.any()
    assert 0.7 < level_embed.std().item() < 1.3  # N(0, 1)
    if not model.config.two_stage:
        assert 0.8 < model.query_embed.weight.std().item() < 1.2  # nn.Embedding's N(0, 1)
    for projection in model.input_proj:
        assert not projection[0].bias.any()


def test_pytorch_default_init_would_be_caught() -> None:
    # The bound check above tells Xavier from PyTorch's default (Kaiming-uniform, bound 1/sqrt(fan_in)).
    torch.manual_seed(0)
    default = nn.Linear(64, 128).weight
    assert default.abs().max() < 0.9 * xavier_bound(default)
