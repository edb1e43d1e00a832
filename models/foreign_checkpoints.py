"""Reading the original Deformable DETR / DetReg / UP-DETR checkpoint key layouts into ours.

Those repositories save ``{"model": state_dict, ...}`` with keys such as
``backbone.0.body.layer1.0.conv1.weight``, ``transformer.encoder.layers.0.norm1.weight``,
``transformer.decoder.layers.0.linear1.weight``, ``class_embed.0.weight``, ``bbox_embed.0.layers.0.weight``.
Renaming is all that is needed: our modules keep the original parameter shapes. DetReg's extra heads
(``feature_embed``) and UP-DETR's DETR transformer have no counterpart and are reported as unused by
:func:`detr_ssl.engine.checkpoint.load_pretrained`, which calls :func:`convert_foreign_state_dict`.
"""

from __future__ import annotations

import re

from torch import Tensor

# Ordered (pattern, replacement) rules; the first match renames a key. A None replacement drops it.
_RULES: list[tuple[re.Pattern[str], str | None]] = [(re.compile(p), r) for p, r in [
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
]]


def is_foreign_layout(state: dict[str, Tensor]) -> bool:
    """True for a state dict saved by the original Deformable DETR / DetReg / UP-DETR code."""
    return any(key.startswith(("transformer.", "backbone.0.body.")) for key in state)


def convert_foreign_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renames original-layout keys to ours; keys no rule knows are kept as they are (and later
    reported as unused if the model has no such key)."""
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        new_key: str | None = key
        for pattern, replacement in _RULES:
            if pattern.search(key):
                new_key = None if replacement is None else pattern.sub(replacement, key)
                break
        if new_key is not None:
            converted[new_key] = value
    return converted
