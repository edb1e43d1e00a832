"""The HuggingFace transformers Deformable DETR that computes the same function as one of our configs.

Used by ``scripts/bench_train_step.py`` (the peer we time ourselves against) and by the test that checks
our reading of transformers checkpoints (:mod:`detr_ssl.models.foreign_checkpoints`) gives identical
outputs. ``transformers`` is an optional dependency (the ``bench`` extra); it is imported only here.
"""

from __future__ import annotations

from detr_ssl.models.backbone import frozen_prefixes
from detr_ssl.models.config import ModelConfig
from torch import nn


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
