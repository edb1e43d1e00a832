"""The HuggingFace transformers Deformable DETR that computes the same function as one of our configs.

Used by ``scripts/bench_train_step.py`` (the peer we time ourselves against), by the test that checks
our reading of transformers checkpoints (:mod:`detr_ssl.models.foreign_checkpoints`) gives identical
outputs, and by the export to transformers (:func:`transformers_state_dict`, the inverse of that reading).
``transformers`` is an optional dependency (the ``bench`` extra); it is imported only inside functions,
so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from detr_ssl.models.backbone import frozen_prefixes
from detr_ssl.models.config import ModelConfig
from detr_ssl.models.foreign_checkpoints import convert_foreign_state_dict


def transformers_config(config: ModelConfig, num_classes: int, aux_loss: bool = True) -> object:
    """A ``DeformableDetrConfig`` with ``config``'s architecture (random weights, nothing downloaded).

    transformers' backbone is a timm model with frozen BatchNorm, so only ``backbone_norm="frozen_bn"``
    has a counterpart.
    """
    from transformers import DeformableDetrConfig

    if config.backbone_norm != "frozen_bn":
        raise ValueError(f"transformers' Deformable DETR has a frozen-BN backbone, not {config.backbone_norm!r}")
    return DeformableDetrConfig(
        num_labels=num_classes, backbone=config.backbone, d_model=config.hidden_dim,
        encoder_layers=config.enc_layers, decoder_layers=config.dec_layers,
        encoder_attention_heads=config.num_heads, decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.ffn_dim, decoder_ffn_dim=config.ffn_dim,
        num_feature_levels=config.num_feature_levels, encoder_n_points=config.enc_points,
        decoder_n_points=config.dec_points, num_queries=config.num_queries,
        two_stage_num_proposals=config.num_queries, with_box_refine=config.with_box_refine,
        two_stage=config.two_stage, auxiliary_loss=aux_loss,
        # Random backbone weights, never a download (transformers 4 defaults to timm's pretrained weights;
        # 5 always builds its timm backbone without them and ignores the flag).
        use_pretrained_backbone=False,
        # Ours drops out where the original code does: residual branches, the FFN's hidden activation and
        # the decoder's self-attention weights. transformers defaults the last two to 0.
        dropout=config.dropout, activation_dropout=config.dropout, attention_dropout=config.dropout,
    )


def build_transformers_detector(config: ModelConfig, num_classes: int, aux_loss: bool = True) -> nn.Module:
    """transformers' ``DeformableDetrForObjectDetection`` for ``config``, with the same parameters frozen as
    ours (the backbone's stem and first ``backbone_frozen_stages`` stages; transformers' timm backbone
    would train them all)."""
    from transformers import DeformableDetrForObjectDetection

    model = DeformableDetrForObjectDetection(transformers_config(config, num_classes, aux_loss))
    frozen = frozen_prefixes(config.backbone_frozen_stages)
    for name, param in model.model.backbone.model.named_parameters():
        if not config.train_backbone or name.startswith(frozen):
            param.requires_grad_(False)
    return model


def _sources(their_state: Mapping[str, Tensor]) -> dict[str, tuple[str, int, int]]:
    """Where :func:`convert_foreign_state_dict` puts each transformers tensor: ``(our key, first row, end
    row)``. Learned by converting stand-ins whose every row holds the index of the tensor it stands for, so
    a rename and a concatenation along rows (q, k, v into ``in_proj_*``) are both read back from the
    result; a tensor the conversion drops has no entry."""
    keys = list(their_state)
    stand_ins = {key: torch.full((len(tensor) if tensor.dim() else 1,), index, dtype=torch.long)
                 for index, (key, tensor) in enumerate(their_state.items())}
    sources: dict[str, tuple[str, int, int]] = {}
    for our_key, rows in convert_foreign_state_dict(stand_ins).items():
        bounds = [0, *((torch.nonzero(rows[1:] != rows[:-1]).flatten() + 1).tolist()), len(rows)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            key = keys[int(rows[start])]
            if key in sources:
                raise ValueError(f"transformers' {key} is read into both {sources[key][0]} and {our_key}")
            sources[key] = (our_key, start, end)
    return sources


def _alias_of(state: Mapping[str, Tensor], keys: set[str]) -> dict[str, str]:
    """Each key of ``state`` outside ``keys`` whose tensor is one of a key in ``keys`` (a module registered
    under two names, e.g. heads shared by the decoder), mapped to that key."""
    def identity(tensor: Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        return tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride())

    owner = {identity(state[key]): key for key in keys if state[key].numel()}
    return {key: owner[identity(tensor)] for key, tensor in state.items()
            if key not in keys and identity(tensor) in owner}


def transformers_state_dict(ours: nn.Module, theirs: nn.Module) -> dict[str, Tensor]:
    """Our detector's weights under the keys of ``theirs``, the transformers model built for its config
    (:func:`build_transformers_detector`): the inverse of :func:`convert_foreign_state_dict`, derived
    from it rather than kept as a second table. Each transformers tensor is the rows of our tensor that
    the conversion reads it into (the decoder's ``in_proj_*`` split back into q, k, v); one the conversion
    drops must be another name of a tensor that has a source (transformers' ``model.decoder.*_embed``
    alias its top-level heads).

    Raises:
        ValueError: when a transformers tensor has no source in ours, or a tensor of ours would not be
            exported (a model transformers cannot express), or the shapes disagree.
    """
    our_state, their_state = ours.state_dict(), theirs.state_dict()
    sources = _sources(their_state)
    exported: dict[str, Tensor] = {}
    rows_read: dict[str, int] = {}
    for key, (our_key, start, end) in sources.items():
        if our_key not in our_state:
            raise ValueError(f"transformers' {key} has no counterpart in our detector (read into {our_key})")
        value = our_state[our_key][start:end] if our_state[our_key].dim() else our_state[our_key]
        if value.numel() != their_state[key].numel():
            raise ValueError(f"our {our_key} has {tuple(value.shape)} for transformers' {key} "
                             f"{tuple(their_state[key].shape)}")
        exported[key] = value.reshape(their_state[key].shape)
        rows_read[our_key] = rows_read.get(our_key, 0) + end - start
    if cut := [key for key, rows in rows_read.items() if rows != (len(our_state[key]) if our_state[key].dim() else 1)]:
        raise ValueError(f"our {', '.join(cut[:3])} have more rows than transformers' model holds")
    exported |= {key: exported[alias] for key, alias in _alias_of(their_state, set(exported)).items()}
    if unsourced := [key for key in their_state if key not in exported]:
        raise ValueError(f"transformers' {', '.join(unsourced[:3])} (of {len(unsourced)}) have no source in ours")
    used = {our_key for our_key, _, _ in sources.values()}
    used |= set(_alias_of(our_state, used))
    if unused := [key for key in our_state if key not in used]:
        raise ValueError(f"our {', '.join(unused[:3])} (of {len(unused)}) have no place in transformers' model")
    return exported
