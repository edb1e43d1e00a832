"""UP-DETR pieces: patch sampling, query groups and their attention mask, reconstruction loss."""

from __future__ import annotations

import torch
from torch import nn

from detr_ssl.box_ops import cxcywh_to_xyxy
from detr_ssl.losses.matched_features import all_layers_feature_loss, matched_feature_loss
from detr_ssl.models.heads import MLP
from detr_ssl.models.outputs import DetectionOutput
from detr_ssl.tasks.updetr import UpDetrModel, group_attention_mask, query_groups, sample_patches


def test_patches_lie_inside_each_image_and_respect_the_minimum_side() -> None:
    torch.manual_seed(0)
    sizes = torch.tensor([[40, 64], [128, 20], [8, 8]])
    for boxes, (height, width) in zip(sample_patches(sizes, num_patches=50, min_size=8), sizes.tolist()):
        assert boxes.shape == (50, 4)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (w >= min(8, width)).all() and (h >= min(8, height)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert w.max() > 8 or width == 8  # sides vary, not stuck at the minimum


def test_patch_targets_are_the_cropped_boxes(monkeypatch) -> None:
    """The boxes the task asks the crop path for are the boxes the detector is trained to find."""
    from detr_ssl.datasets.collate import Batch
    from detr_ssl.tasks import updetr as module

    cfg = module.UpDetrTask.configure(module.UpDetrTask.preset_config("demo"))
    task = module.UpDetrTask(cfg)
    model = task.build_model()
    seen: dict[str, object] = {}
    real_crop, real_criterion = module.crop_and_resize, task.criterion

    def spy_crop(images, boxes, size):
        seen["crop_boxes"] = [b.clone() for b in boxes]
        return real_crop(images, boxes, size)

    def spy_criterion(output, targets):
        seen["targets"] = targets
        return real_criterion(output, targets)

    monkeypatch.setattr(module, "crop_and_resize", spy_crop)
    task.criterion = spy_criterion
    sizes = [(96, 128), (112, 80)]
    batch = Batch(images=torch.randn(2, 3, 112, 128), mask=torch.zeros(2, 112, 128, dtype=torch.bool),
                  targets=[{"size": torch.tensor(s), "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)} for s in sizes])
    task.compute_loss(model, batch)
    for boxes, target, (h, w) in zip(seen["crop_boxes"], seen["targets"], sizes):
        back = cxcywh_to_xyxy(target["boxes"]) * torch.tensor([w, h, w, h])
        assert torch.allclose(back, boxes, atol=1e-4)
        assert (target["labels"] == 0).all()


def test_attention_mask_blocks_exactly_cross_group_pairs() -> None:
    groups = query_groups(num_patches=3, queries_per_patch=2, shuffle=False)
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]
    mask = group_attention_mask(groups)
    expected = torch.ones(6, 6, dtype=torch.bool)
    for g in range(3):
        expected[2 * g:2 * g + 2, 2 * g:2 * g + 2] = False
    assert torch.equal(mask, expected)


def test_shuffled_groups_keep_group_sizes_and_mask_follows_them() -> None:
    torch.manual_seed(3)
    groups = query_groups(num_patches=4, queries_per_patch=5, shuffle=True)
    assert torch.bincount(groups).tolist() == [5] * 4
    assert groups.tolist() != sorted(groups.tolist())
    mask = group_attention_mask(groups)
    same = groups[:, None] == groups[None, :]
    assert torch.equal(mask, ~same)
    assert (~mask).sum(1).tolist() == [5] * 20  # every query sees its own group, itself included


def test_reconstruction_loss_zero_for_identical_features_positive_otherwise() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 16)
    indices = [(torch.tensor([4, 0, 2]), torch.tensor([1, 0, 2]))]
    predictions = torch.zeros(1, 6, 16)
    predictions[0, torch.tensor([4, 0, 2])] = features[torch.tensor([1, 0, 2])] * 3.0  # same direction
    assert matched_feature_loss(predictions, [features], indices, 3.0, "normalized_mse") < 1e-10
    predictions[0, 4] = -predictions[0, 4]
    assert matched_feature_loss(predictions, [features], indices, 3.0, "normalized_mse") > 1.0


def test_feature_loss_covers_every_matched_decoder_layer() -> None:
    predictions = torch.randn(3, 1, 4, 8)
    targets = [torch.randn(2, 8)]
    match = (torch.tensor([0, 1]), torch.tensor([1, 0]))
    layer_indices = {"": [match], "_0": [match], "_1": [match], "_enc": [match]}
    total, terms = all_layers_feature_loss(predictions, targets, layer_indices, 2.0, "l1", "loss_x")
    assert set(terms) == {"loss_x", "loss_x_0", "loss_x_1"}  # the encoder has no decoder features
    assert torch.isclose(total, sum(terms.values()))
    assert torch.isclose(terms["loss_x"], matched_feature_loss(predictions[2], targets, [match], 2.0, "l1"))


class _RecordingDetector(nn.Module):
    """Stands in for the detector: records the per-query additions UP-DETR hands it."""

    hidden_dim = 8

    def forward(self, images, mask, query_extra, self_attn_mask):
        self.query_extra = query_extra
        hidden = torch.zeros(2, *query_extra.shape)
        return DetectionOutput(logits=hidden[-1, ..., :1], boxes=hidden[-1, ..., :4], hidden_states=hidden)


def test_query_patches_are_masked_per_query_in_training_only() -> None:
    """As released: each query's patch feature is zeroed with probability mask_ratio, never rescaled."""
    torch.manual_seed(0)
    model = UpDetrModel(_RecordingDetector(), feature_dim=6, mask_ratio=0.1)
    features, groups = torch.randn(50, 4, 6), query_groups(4, 10, shuffle=False)
    expected = model.patch_projection(features)[:, groups]
    model.train()(torch.zeros(50, 3, 8, 8), torch.zeros(50, 8, 8, dtype=torch.bool), features, groups)
    added = model.detector.query_extra
    zeroed = (added == 0).all(dim=-1)
    assert abs(float(zeroed.float().mean()) - 0.1) < 0.02
    torch.testing.assert_close(added[~zeroed], expected[~zeroed])  # the others unchanged: no rescaling
    model.eval()(torch.zeros(50, 3, 8, 8), torch.zeros(50, 8, 8, dtype=torch.bool), features, groups)
    torch.testing.assert_close(model.detector.query_extra, expected)
    assert isinstance(model.reconstruction, MLP) and len(model.reconstruction.layers) == 2
