"""Pair DETR: an object is a pair of keypoints, its top-left corner and its center.

Reference: Iranmanesh, Chen and Lien, "Pair DETR: Contrastive Learning Speeds Up DETR Training", 2022
(arXiv 2210.16476).

Built from the shared Deformable DETR by configuration, not by copying it: the detector's own decoder
and class heads serve as the *center* decoder (the center of its box prediction is the keypoint), and a
second :class:`DeformableDecoder` with its own queries attends into the same encoder memory to find the
*corner*. Same-index queries of the two decoders form a candidate pair; each decoder's queries also emit
an embedding that the contrastive loss uses to tie the two halves of one object together.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from detr_ssl.errors import ConfigError
from detr_ssl.models.config import ModelConfig
from detr_ssl.models.deformable_detr import DeformableDETR, heads_of
from detr_ssl.models.deformable_transformer import DeformableDecoder
from detr_ssl.models.heads import box_head
from detr_ssl.models.outputs import DetectionOutput, PairOutput
from detr_ssl.pairs import pairs_to_boxes


class PairDETR(nn.Module):
    """Two keypoint decoders on one Deformable DETR encoder.

    Args:
        config: the detector's configuration (two-stage is not supported: queries come from embeddings).
        num_classes: object classes (predicted by the center decoder).
        embed_dim: size of the keypoint embeddings.
    """

    def __init__(self, config: ModelConfig, num_classes: int, embed_dim: int = 64) -> None:
        super().__init__()
        if config.two_stage:
            raise ConfigError("Pair DETR does not support two-stage queries; drop --model.two-stage")
        self.detector = DeformableDETR(config, num_classes)
        d = config.hidden_dim
        corner_heads = heads_of(box_head(d), config.dec_layers, shared=not config.with_box_refine)
        self.corner_decoder = DeformableDecoder(copy.deepcopy(self.detector.decoder.layers[0]), config.dec_layers,
                                                corner_heads, refine=config.with_box_refine)
        self.corner_query_embed = nn.Embedding(config.num_queries, 2 * d)
        self.corner_reference_points = nn.Linear(d, 2)
        self.corner_embedding = nn.Linear(d, embed_dim)
        self.center_embedding = nn.Linear(d, embed_dim)

    @property
    def config(self) -> ModelConfig:
        return self.detector.config

    def forward(self, images: Tensor, mask: Tensor) -> PairOutput:
        encoded = self.detector.encode(images, mask)
        center_out = self.detector.decode(encoded)
        batch = images.shape[0]
        query_pos, tgt = self.corner_query_embed.weight.split(self.detector.hidden_dim, dim=1)
        query_pos = query_pos[None].expand(batch, -1, -1)
        corner_hidden, corner_boxes = self.corner_decoder(
            tgt[None].expand(batch, -1, -1), query_pos, self.corner_reference_points(query_pos).sigmoid(),
            encoded.memory, encoded.spatial_shapes, encoded.level_start_index, encoded.valid_ratios,
            encoded.padding_mask)
        center_logits = [*(a.logits for a in center_out.aux), center_out.logits]
        center_boxes = [*(a.boxes for a in center_out.aux), center_out.boxes]
        layers = [
            PairOutput(logits=logits, corners=corner_box[..., :2], centers=center_box[..., :2],
                       corner_embed=self.corner_embedding(corner_h), center_embed=self.center_embedding(center_h))
            for logits, corner_box, center_box, corner_h, center_h in zip(
                center_logits, corner_boxes, center_boxes, corner_hidden, center_out.hidden_states)
        ]
        final = layers[-1]
        final.aux = layers[:-1]
        return final


def as_detections(output: PairOutput) -> DetectionOutput:
    """Boxes from keypoint pairs, for evaluation with the usual post-processing."""
    return DetectionOutput(logits=output.logits, boxes=pairs_to_boxes(output.corners, output.centers).clamp(0, 1))
