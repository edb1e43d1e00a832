"""Reading foreign Deformable DETR checkpoint key layouts into ours.

Two layouts are known. The original Deformable DETR / DetReg / UP-DETR repositories save ``{"model": state_dict, ...}`` with keys such as
``backbone.0.body.layer1.0.conv1.weight``, ``transformer.encoder.layers.0.norm1.weight``,
``transformer.decoder.layers.0.linear1.weight``, ``class_embed.0.weight``, ``bbox_embed.0.layers.0.weight``.
Renaming is all that is needed: our modules keep the original parameter shapes. A DETReg checkpoint's
object-embedding head (``feature_embed.layers.{0,1}``, the 2-layer MLP on the last decoder layer) is our
:class:`~detr_ssl.tasks.detreg.DetRegModel`'s ``embedding_head``, so such a checkpoint is converted to that
model's layout: the detector under ``detector.``, the head as ``embedding_head.``.
:func:`detr_ssl.engine.checkpoint.load_pretrained`, which calls :func:`convert_foreign_state_dict`, strips
the ``detector.`` prefix again for a bare detector, which then reports ``embedding_head.*`` as unused.
UP-DETR's DETR transformer has no counterpart and is reported as unused.

HuggingFace transformers' ``DeformableDetrForObjectDetection`` (e.g. ``SenseTime/deformable-detr`` saved
with ``save_pretrained`` and read back as a state dict) names the same tensors ``model.encoder.layers.0.
self_attn_layer_norm.weight``, ``model.decoder.layers.0.encoder_attn.value_proj.weight``, ... and splits
the decoder self-attention's input projection into ``q_proj`` / ``k_proj`` / ``v_proj``, which are
concatenated into our ``in_proj_weight``.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from detr_ssl.errors import CheckpointError

# Ordered (pattern, replacement) rules; the first match renames a key. A None replacement drops it.
Rules = list[tuple[re.Pattern[str], str | None]]


def _compile(rules: list[tuple[str, str | None]]) -> Rules:
    return [(re.compile(pattern), replacement) for pattern, replacement in rules]


_ORIGINAL_RULES = _compile([
    (r"^backbone\.0\.body\.", "backbone.body."),
    (r"^transformer\.level_embed$", "level_embed"),
    (r"^transformer\.reference_points\.", "reference_points."),
    (r"^transformer\.enc_output\.", "query_selector.memory_proj.0."),
    (r"^transformer\.enc_output_norm\.", "query_selector.memory_proj.1."),
    (r"^transformer\.pos_trans\.", "query_selector.query_proj.0."),
    (r"^transformer\.pos_trans_norm\.", "query_selector.query_proj.1."),
    (r"^transformer\.decoder\.(bbox_embed|class_embed)\.", None),  # aliases of the top-level heads
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", r"encoder.layers.\1.norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear1\.", r"encoder.layers.\1.ffn.net.0."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear2\.", r"encoder.layers.\1.ffn.net.3."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"encoder.layers.\1.ffn.norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.self_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"decoder.layers.\1.norm_cross."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"decoder.layers.\1.norm_self."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear1\.", r"decoder.layers.\1.ffn.net.0."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear2\.", r"decoder.layers.\1.ffn.net.3."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"decoder.layers.\1.ffn.norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.(self_attn|cross_attn)\.", r"decoder.layers.\1.\2."),
    (r"^class_embed\.", "class_heads."),
    (r"^bbox_embed\.", "box_heads."),
])

_HF_LAYER = r"^model\.(encoder|decoder)\.layers\.(\d+)\."
_HF_RULES = _compile([
    (r"^model\.backbone\.(conv_encoder\.)?model\.", "backbone.body."),  # older versions add conv_encoder.
    (r"^model\.(input_proj|level_embed|reference_points)", r"\1"),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.enc_output\.", "query_selector.memory_proj.0."),
    (r"^model\.enc_output_norm\.", "query_selector.memory_proj.1."),
    (r"^model\.pos_trans\.", "query_selector.query_proj.0."),
    (r"^model\.pos_trans_norm\.", "query_selector.query_proj.1."),
    (r"^model\.decoder\.(bbox_embed|class_embed)\.", None),  # aliases of the top-level heads
    (_HF_LAYER + r"(mlp\.)?fc1\.", r"\1.layers.\2.ffn.net.0."),
    (_HF_LAYER + r"(mlp\.)?fc2\.", r"\1.layers.\2.ffn.net.3."),
    (_HF_LAYER + r"final_layer_norm\.", r"\1.layers.\2.ffn.norm."),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layers.\1.norm."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"decoder.layers.\1.norm_self."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"decoder.layers.\1.norm_cross."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"decoder.layers.\1.cross_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.(o_proj|out_proj)\.", r"decoder.layers.\1.self_attn.out_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.", r"decoder.layers.\1.self_attn.\2_proj."),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.self_attn."),
    (r"^class_embed\.", "class_heads."),
    (r"^bbox_embed\.", "box_heads."),
])
_SPLIT_QKV = re.compile(r"^(decoder\.layers\.\d+\.self_attn)\.([qkv])_proj\.(weight|bias)$")


def _is_transformers_layout(state: dict[str, Tensor]) -> bool:
    return any(key.startswith(("model.backbone.", "model.encoder.layers.")) for key in state)


def is_foreign_layout(state: dict[str, Tensor]) -> bool:
    """True for a state dict saved by the original Deformable DETR / DetReg / UP-DETR code or by
    HuggingFace transformers."""
    return _is_transformers_layout(state) or any(key.startswith(("transformer.", "backbone.0.body.")) for key in state)


def _rename(state: dict[str, Tensor], rules: Rules) -> dict[str, Tensor]:
    """The first matching rule renames a key (None drops it); keys no rule knows are kept as they are."""
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        new_key: str | None = key
        for pattern, replacement in rules:
            if pattern.search(key):
                new_key = None if replacement is None else pattern.sub(replacement, key)
                break
        if new_key is not None:
            renamed[new_key] = value
    return renamed


def _merge_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Concatenates separate q/k/v projections into ``nn.MultiheadAttention``'s ``in_proj_*``."""
    merged: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _SPLIT_QKV.match(key)
        if match:
            parts.setdefault((match[1], match[3]), {})[match[2]] = value
        else:
            merged[key] = value
    for (module, kind), qkv in parts.items():
        if qkv.keys() != {"q", "k", "v"}:
            raise CheckpointError(f"{module}: the checkpoint has only the {sorted(qkv)} projections of q, k, v")
        merged[f"{module}.in_proj_{kind}"] = torch.cat((qkv["q"], qkv["k"], qkv["v"]))
    return merged


_DETREG_HEAD = "feature_embed."
"""DETReg's object-embedding MLP: ``MLP(hidden, hidden, E, 2)`` with the same ``layers.{0,1}`` as ours."""
_DETREG_LAYOUT = ("detector.", "embedding_head.")
"""Where :class:`~detr_ssl.tasks.detreg.DetRegModel` holds the detector and the embedding head."""


def convert_foreign_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renames original- or transformers-layout keys to ours; keys no rule knows are kept as they are
    (and later reported as unused if the model has no such key). A DETReg checkpoint (one with
    ``feature_embed.*``) comes out in the DetReg model's layout: ``detector.<our detector key>`` and
    ``embedding_head.<layers...>``."""
    if _is_transformers_layout(state):
        return _merge_qkv(_rename(state, _HF_RULES))
    renamed = _rename(state, _ORIGINAL_RULES)
    if not any(key.startswith(_DETREG_HEAD) for key in renamed):
        return renamed
    detector, head = _DETREG_LAYOUT
    return {(head + key.removeprefix(_DETREG_HEAD) if key.startswith(_DETREG_HEAD) else detector + key): value
            for key, value in renamed.items()}
