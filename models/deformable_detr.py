"""The Deformable DETR detector: backbone -> multi-scale projection -> deformable encoder/decoder -> heads.

Task-agnostic by design: UP-DETR adds per-query embeddings and a decoder self-attention mask through
``forward``'s optional arguments, and extra heads read ``DetectionOutput.hidden_states``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ssl.models.backbone import Backbone
from detr_ssl.models.config import ModelConfig
from detr_ssl.models.deformable_transformer import DecoderLayer, DeformableDecoder, DeformableEncoder, EncoderLayer
from detr_ssl.models.heads import box_head, class_head
from detr_ssl.models.msda import MSDeformAttn
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.models.position_encoding import SinePositionEncoding
from detr_ssl.models.two_stage import ProposalQuerySelector


@dataclass
class EncodedImages:
    """The encoder's output and the layout a decoder needs to attend into it.

    Attributes:
        memory: ``(B, S, D)`` encoded pixels of all levels, flattened.
        padding_mask: ``(B, S)`` True on padded pixels.
        spatial_shapes: ``(L, 2)`` (H, W) per level; level_start_index: ``(L,)`` offsets into ``S``.
        valid_ratios: ``(B, L, 2)`` unpadded fraction of each level, as (w, h).
    """

    memory: Tensor
    padding_mask: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor


def _projection(in_channels: int, hidden_dim: int, stride: int) -> nn.Sequential:
    """1x1 (stride 1) or 3x3 stride-2 convolution + GroupNorm, Xavier-initialised."""
    conv = (nn.Conv2d(in_channels, hidden_dim, kernel_size=1) if stride == 1
            else nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1))
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(min(32, hidden_dim), hidden_dim))


def input_projections(channels: list[int], hidden_dim: int, num_levels: int) -> nn.ModuleList:
    """The detector's ``input_proj``: a 1x1 projection of each backbone level (``channels``, shallowest
    first) and, up to ``num_levels``, extra 3x3 stride-2 levels, the first reading the deepest backbone
    level. Pyramid pretexts build the same module, so their export loads into the detector by name."""
    projections = [_projection(c, hidden_dim, stride=1) for c in channels]
    extra_in = channels[-1]
    for _ in range(num_levels - len(channels)):
        projections.append(_projection(extra_in, hidden_dim, stride=2))
        extra_in = hidden_dim
    return nn.ModuleList(projections)


def project_levels(input_proj: nn.ModuleList, features: list[Tensor]) -> list[Tensor]:
    """``(B, hidden_dim, H_l, W_l)`` per level: each backbone level through its projection, then the extra
    levels, each downsampling the one before (the raw deepest backbone level for the first)."""
    srcs = [proj(feature) for proj, feature in zip(input_proj, features)]
    previous = features[-1]
    for proj in list(input_proj)[len(features):]:
        srcs.append(proj(previous))
        previous = srcs[-1]
    return srcs


def _valid_ratio(mask: Tensor) -> Tensor:
    """Unpadded fraction of a ``(B, H, W)`` map along (w, h): ``(B, 2)``."""
    height, width = mask.shape[1:]
    valid_h = (~mask[:, :, 0]).sum(1).float() / height
    valid_w = (~mask[:, 0, :]).sum(1).float() / width
    return torch.stack((valid_w, valid_h), dim=-1)


def init_transformer_(parts: list[nn.Module], level_embed: nn.Parameter) -> None:
    """Deformable DETR's initialisation of its transformer (``DeformableTransformer._reset_parameters``).

    PyTorch starts a Linear's weight Kaiming-uniform (bound ``1/sqrt(fan_in)``); the original instead
    draws every weight matrix of the transformer Xavier-uniform (bound ``sqrt(6/(fan_in+fan_out))``),
    then lets each deformable attention redo its own initialisation (zero offset and attention weights),
    and draws the level embedding from N(0, 1). Biases keep their defaults. The heads, query embeddings,
    input projections and backbone are not part of it: they are initialised where they are built. So
    ``parts`` must not hold the heads, to which the decoder and the two-stage selector keep references.
    """
    for part in parts:
        for param in part.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
    for part in parts:
        for module in part.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
    nn.init.normal_(level_embed)


def heads_of(module: nn.Module, count: int, shared: bool) -> nn.ModuleList:
    """``count`` heads: the same module repeated (shared weights) or independent copies."""
    return nn.ModuleList(module if shared else copy.deepcopy(module) for _ in range(count))


class DeformableDETR(nn.Module):
    """Deformable DETR with optional iterative box refinement and two-stage queries.

    Args:
        config: architecture hyper-parameters.
        num_classes: number of object classes (sigmoid outputs, no explicit background class).
    """

    def __init__(self, config: ModelConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        d = config.hidden_dim
        backbone_levels = min(3, config.num_feature_levels)
        self.backbone = Backbone(config.backbone, config.backbone_norm, backbone_levels,
                                 trainable=config.train_backbone, weights=config.backbone_weights,
                                 frozen_stages=config.backbone_frozen_stages)
        self.input_proj = input_projections(self.backbone.channels, d, config.num_feature_levels)
        self.position_encoding = SinePositionEncoding(d // 2)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, d))

        enc_layer = EncoderLayer(d, config.ffn_dim, config.dropout, config.num_feature_levels,
                                 config.num_heads, config.enc_points, config.msda_backend)
        self.encoder = DeformableEncoder(enc_layer, config.enc_layers, checkpointing=config.encoder_checkpointing)

        # As the original: independent copies of the heads per decoder layer when boxes are refined layer
        # by layer, otherwise one shared pair; two-stage proposals are scored by one more (or the shared) pair.
        # The (w, h) bias -2 goes on the first box head only, the one predicting from point references
        # (so on all of them when shared); later refined layers and two-stage decoders start from boxes.
        per_layer = config.with_box_refine
        num_heads = config.dec_layers + (1 if config.two_stage else 0)
        self.class_heads = heads_of(class_head(d, num_classes), num_heads, shared=not per_layer)
        self.box_heads = heads_of(box_head(d, size_bias=0.0), num_heads, shared=not per_layer)
        if not config.two_stage:
            nn.init.constant_(self.box_heads[0].layers[-1].bias[2:], -2.0)
        dec_layer = DecoderLayer(d, config.ffn_dim, config.dropout, config.num_feature_levels,
                                 config.num_heads, config.dec_points, config.msda_backend)
        self.decoder = DeformableDecoder(dec_layer, config.dec_layers, self.box_heads,
                                         refine=config.with_box_refine)
        if config.two_stage:
            self.query_selector = ProposalQuerySelector(d, config.num_queries, self.class_heads[-1],
                                                        self.box_heads[-1])
            transformer = [self.query_selector.memory_proj, self.query_selector.query_proj]
        else:
            self.query_embed = nn.Embedding(config.num_queries, 2 * d)
            self.reference_points = nn.Linear(d, 2)
            nn.init.zeros_(self.reference_points.bias)
            transformer = [self.reference_points]
        init_transformer_([self.encoder, self.decoder.layers, *transformer], self.level_embed)

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    def multiscale_features(self, images: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Projected feature maps, their padding masks and position encodings (+ level embedding)."""
        levels = self.backbone(images, mask)
        srcs = project_levels(self.input_proj, [feature for feature, _ in levels])
        masks = [level_mask for _, level_mask in levels]
        for src in srcs[len(levels):]:
            masks.append(F.interpolate(mask[None].float(), size=src.shape[-2:])[0].to(torch.bool))
        positions = [self.position_encoding(level_mask).to(src.dtype) + self.level_embed[index].view(1, -1, 1, 1)
                     for index, (src, level_mask) in enumerate(zip(srcs, masks))]
        return srcs, masks, positions

    def encode(self, images: Tensor, mask: Tensor) -> EncodedImages:
        """Backbone, projections and the deformable encoder: everything the decoders share."""
        srcs, masks, positions = self.multiscale_features(images, mask)
        spatial_shapes = torch.tensor([s.shape[-2:] for s in srcs], dtype=torch.long, device=images.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([_valid_ratio(m) for m in masks], dim=1)
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) for p in positions], dim=1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], dim=1)
        memory = self.encoder(src_flat, pos_flat, spatial_shapes, level_start_index, valid_ratios, mask_flat)
        return EncodedImages(memory, mask_flat, spatial_shapes, level_start_index, valid_ratios)

    def decode(self, encoded: EncodedImages, query_extra: Tensor | None = None,
               self_attn_mask: Tensor | None = None) -> DetectionOutput:
        """The decoder and heads on encoded images (see :meth:`forward` for the optional arguments)."""
        batch = encoded.memory.shape[0]
        encoder_out = None
        if self.config.two_stage:
            if query_extra is not None:
                raise ValueError("query_extra is not supported with two-stage queries")
            encoder_out, reference_points, tgt, query_pos = self.query_selector(
                encoded.memory, encoded.padding_mask, encoded.spatial_shapes)
        else:
            query_pos, tgt = self.query_embed.weight.split(self.hidden_dim, dim=1)
            query_pos = query_pos[None].expand(batch, -1, -1)
            tgt = tgt[None].expand(batch, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        if query_extra is not None:
            tgt = tgt + query_extra

        hidden, boxes = self.decoder(tgt, query_pos, reference_points, encoded.memory, encoded.spatial_shapes,
                                     encoded.level_start_index, encoded.valid_ratios, encoded.padding_mask,
                                     self_attn_mask)
        logits = [head(h) for head, h in zip(self.class_heads, hidden)]
        aux = [DetectionOutput(logits=lg, boxes=bx) for lg, bx in zip(logits[:-1], boxes[:-1])]
        return DetectionOutput(logits=logits[-1], boxes=boxes[-1], aux=aux, encoder=encoder_out,
                               hidden_states=hidden)

    def forward(self, images: Tensor, mask: Tensor, query_extra: Tensor | None = None,
                self_attn_mask: Tensor | None = None) -> DetectionOutput:
        """Detects objects in a padded batch.

        Args:
            images: ``(B, 3, H, W)`` normalised, zero padded.
            mask: ``(B, H, W)`` bool, True on padding.
            query_extra: ``(B, Q, D)`` added to the decoder's content queries (UP-DETR patch features).
            self_attn_mask: ``(Q, Q)`` bool, True where query i may *not* attend to query j.
        """
        return self.decode(self.encode(images, mask), query_extra, self_attn_mask)

def build_model(config: ModelConfig, num_classes: int) -> DeformableDETR:
    """The detector for ``config`` with ``num_classes`` outputs."""
    return DeformableDETR(config, num_classes)
