"""CCOP: the jitter curriculum and the hardest positive, size-based RoI levels, proposals mapped into the views,
the released step's numbers (tests/fixtures/ccop_released, made by its make_fixture.py), presets, a
pretraining run whose export initialises the detector's backbone and input_proj, and two processes sharing
the queues."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn
from torchvision.ops import box_iou

from detr_ssl.blocks.momentum import ema_update_
from detr_ssl.blocks.pooling import multilevel_roi_align
from detr_ssl.cli.pretrain import main as pretrain_main, parse_pretrain_args
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.multicrop import ViewGeometry
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.errors import ConfigError
from detr_ssl.losses.ccop import (
    JitterSchedule,
    assign_levels,
    curriculum,
    hardest_positive,
    intra_image_triplet,
    jitter_boxes,
    jitter_validity,
)
from detr_ssl.proposals.options import ProposalConfig, proposal_dataset
from detr_ssl.proposals.views import (
    BoxPairs,
    ProposalFilter,
    ProposalViewDataset,
    ProposalViews,
    box_pairs,
    boxes_in_view,
    collate_proposal_views,
    filter_proposals,
)
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE
from detr_ssl.tasks.ccop import CcopConfig, CcopModel, CcopTask, Encoded, RoiEmbedding, projection_head
from launch import FORKED_GLOO, run_in_two_processes, run_main_in_two_processes
from pretext_runs import ShortRun
from runs import copy_photos, finetune_initialised_parts, load_exported_trunk, scalar_histories

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ccop_released"
META = json.loads((FIXTURE / "meta.json").read_text())
TINY = CcopConfig(feature_dim=8, hidden_dim=32, image_queue_length=16, roi_queue_length=64, level_cells=1.0,
                  min_box_area=4.0, curriculum_steps=10)


def _tiny_model(options: CcopConfig = TINY, seed: int = 0) -> CcopModel:
    """A tiny ResNet (C3-C5 of 8, 8, 16 channels) with a 3-level, 8-channel pyramid."""
    torch.manual_seed(seed)
    trunk = ResNet(BasicBlock, num_classes=0, layers=[1, 1, 1, 1], channels=[4, 8, 8, 16], stem_width=4,
                   stem_type="deep")
    return CcopModel(trunk, options, width=8, num_levels=3)


def _task(options: CcopConfig = TINY) -> CcopTask:
    return CcopTask(replace(CcopTask.preset_config("demo"), ccop=options))


# -- the curriculum, the jitter and the hardest positive ------------------------------------------------------

@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_jittered_boxes_respect_the_curriculum_step(progress: float) -> None:
    schedule = curriculum(progress, (0.8, 0.4), (0.15, 0.6), (0.35, 1.4))
    assert list(schedule) == pytest.approx([0.8 - 0.4 * progress, 0.15 + 0.45 * progress, 0.35 + 1.05 * progress])
    torch.manual_seed(3)
    corners = torch.rand(200, 2) * 400 + 300
    boxes = torch.cat((corners, corners + torch.rand(200, 2) * 150 + 10), dim=1)
    jittered = jitter_boxes(boxes, 10, schedule.xy_magnitude, schedule.wh_magnitude, (1200, 1200))
    assert jittered.shape == (200, 11, 4) and torch.equal(jittered[:, -1], boxes)
    # Far from the view's edges nothing is clipped: the offsets are the drawn ones, within the magnitudes.
    sides = (boxes[:, 2:] - boxes[:, :2]).unsqueeze(1)
    centres = (boxes[:, :2] + boxes[:, 2:]).unsqueeze(1) / 2
    new_sides = jittered[:, :10, 2:] - jittered[:, :10, :2]
    shift = ((jittered[:, :10, :2] + jittered[:, :10, 2:]) / 2 - centres) / sides
    log_scale = torch.log(new_sides / sides)
    assert shift.abs().max() <= schedule.xy_magnitude / 2 + 1e-4
    assert log_scale.abs().max() <= schedule.wh_magnitude / 2 + 1e-4
    assert shift.abs().max() > 0.9 * schedule.xy_magnitude / 2  # the whole range is used
    valid = jitter_validity(boxes, jittered, schedule.iou_threshold)
    iou = torch.stack([box_iou(box[None], copies)[0] for box, copies in zip(boxes, jittered)])
    assert torch.equal(valid, iou >= schedule.iou_threshold) and valid[:, -1].all()
    assert 0 < valid[:, :10].float().mean() < 1


def test_jitter_is_clipped_to_the_view() -> None:
    torch.manual_seed(0)
    boxes = torch.tensor([[0.0, 0.0, 30.0, 20.0], [40.0, 50.0, 64.0, 64.0]])
    jittered = jitter_boxes(boxes, 50, 0.6, 1.4, (64, 80))
    assert jittered.min() >= 0 and (jittered[..., 0::2] <= 80).all() and (jittered[..., 1::2] <= 64).all()
    assert (jittered[..., 2:] >= jittered[..., :2]).all()


def test_the_positive_is_the_least_similar_valid_candidate() -> None:
    torch.manual_seed(1)
    query = F.normalize(torch.randn(30, 8), dim=1)
    candidates = F.normalize(torch.randn(30, 11, 8), dim=-1)
    valid = torch.rand(30, 11) < 0.5
    valid[:, -1] = True
    positive, index = hardest_positive(query, candidates, valid)
    for row in range(30):
        similarities = {int(j): float(query[row] @ candidates[row, j]) for j in valid[row].nonzero()[:, 0]}
        assert int(index[row]) == min(similarities, key=similarities.get)
        assert torch.equal(positive[row], candidates[row, index[row]])
    # Ties go to the first valid candidate; an invalid one is never chosen, however dissimilar.
    same = candidates[:1, :1].expand(1, 11, 8)
    flipped = torch.cat((-query[:1, None], same[:, 1:]), dim=1)
    assert int(hardest_positive(query[:1], same, torch.ones(1, 11, dtype=torch.bool))[1]) == 0
    mask = torch.ones(1, 11, dtype=torch.bool)
    mask[0, 0] = False
    assert int(hardest_positive(query[:1], flipped, mask)[1]) == 1


def test_the_triplet_loss_compares_each_key_box_with_its_own_and_other_query_boxes() -> None:
    torch.manual_seed(2)
    query, key = F.normalize(torch.randn(2, 4, 8), dim=-1), F.normalize(torch.randn(2, 4, 8), dim=-1)
    negatives = torch.rand(2, 4, 4) < 0.5
    negatives.diagonal(dim1=1, dim2=2).fill_(False)
    expected = [max(float(query[b, i] @ key[b, j] - query[b, j] @ key[b, j] + 0.4), 0.0)
                for b, i, j in negatives.nonzero().tolist()]
    loss = intra_image_triplet(query, key, negatives, 0.4)
    assert float(loss) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert float(intra_image_triplet(query, key, torch.zeros_like(negatives), 0.4)) == 0


# -- RoI levels ----------------------------------------------------------------------------------------------

def _square(side: float) -> list[float]:
    return [10.0, 10.0, 10.0 + side, 10.0 + side]


def test_levels_follow_the_size_rule_on_the_detector_strides() -> None:
    """Strides 8, 16, 32, 64 with 12 cells: sides up to 96, 192, 384 px, then the deepest level."""
    sides = [5, 96, 96.5, 150, 192, 193, 384, 385, 900]
    boxes = torch.tensor([_square(side) for side in sides])
    assert assign_levels(boxes, (8, 16, 32, 64), 12.0).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3]
    oblong = torch.tensor([[0.0, 0.0, 400.0, 25.0]])  # sqrt(area) = 100: level by area, not by a side
    assert assign_levels(oblong, (8, 16, 32, 64), 12.0).tolist() == [1]


def test_levels_match_the_released_assignment() -> None:
    """On the released P2-P5 strides, every box up to the 224 px view goes where the release sends it."""
    fixture = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    ours = assign_levels(fixture["levels.boxes"], tuple(META["strides"]), 12.0)
    assert torch.equal(ours, fixture["levels.assigned"])
    assert set(ours.tolist()) == {0, 1, 2, 3}


def test_each_box_is_pooled_from_its_level() -> None:
    levels = [torch.full((2, 3, 64 // s, 64 // s), float(index)) for index, s in enumerate((8, 16, 32))]
    boxes = torch.tensor([_square(8), _square(20), _square(40), [0.0, 0.0, 64.0, 64.0]])
    level = assign_levels(boxes, (8, 16, 32), 2.0)
    assert level.tolist() == [0, 1, 2, 2]
    pooled = multilevel_roi_align(levels, boxes, torch.tensor([0, 1, 0, 1]), level, (64, 64), 7)
    assert pooled.shape == (4, 3, 7, 7)
    torch.testing.assert_close(pooled.mean(dim=(1, 2, 3)), level.float())


# -- proposals in the views ------------------------------------------------------------------------------------

def test_proposals_are_mapped_into_each_view_and_paired_when_both_keep_them() -> None:
    # Original 100 x 100; view 0 is the crop (20, 10)-(60, 50) at 80 px (scale 2), view 1 the same crop flipped.
    crop = torch.tensor([[20.0, 10.0, 60.0, 50.0]])
    proposals = torch.tensor([[[25.0, 20.0, 40.0, 30.0], [0.0, 10.0, 40.0, 50.0], [30.0, 20.0, 31.0, 21.0],
                               [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    geometries = [ViewGeometry(crop, torch.tensor([flip]), torch.tensor([[100, 100]])) for flip in (False, True)]
    seen = boxes_in_view(proposals, geometries[1], (80, 80))
    torch.testing.assert_close(seen.boxes[0, 0], torch.tensor([40.0, 20.0, 70.0, 40.0]))
    straight = boxes_in_view(proposals, geometries[0], (80, 80))
    torch.testing.assert_close(straight.boxes[0, :3], torch.tensor([[10.0, 20.0, 40.0, 40.0], [0.0, 0.0, 40.0, 80.0],
                                                                     [20.0, 20.0, 22.0, 22.0]]))
    torch.testing.assert_close(straight.visible[0, :3], torch.tensor([1.0, 0.5, 1.0]))
    torch.testing.assert_close(straight.area[0, :3], torch.tensor([600.0, 3200.0, 4.0]))
    batch = ProposalViews([torch.zeros(1, 3, 80, 80)] * 2, geometries, proposals, mask)
    # Half outside the crop (0.5 <= 0.6): dropped; 4 px^2 is not more than 4: dropped.
    pairs = box_pairs(batch, part_threshold=0.6, min_area=4.0)
    assert pairs.keep.tolist() == [[True, False, False, False]]
    assert box_pairs(batch, part_threshold=0.4, min_area=3.0).keep.tolist() == [[True, True, True, False]]
    torch.testing.assert_close(pairs.key[0, 0], torch.tensor([40.0, 20.0, 70.0, 40.0]))


def test_proposals_are_filtered_as_the_released_script_does() -> None:
    boxes = torch.tensor([[0.0, 0.0, 50.0, 50.0],    # kept
                          [0.0, 0.0, 100.0, 30.0],   # aspect 3.33: dropped
                          [60.0, 60.0, 75.0, 80.0],  # side sqrt(300) < 20: dropped
                          [2.0, 2.0, 52.0, 52.0],    # IoU 0.85 with the first: suppressed
                          [30.0, 30.0, 90.0, 80.0],  # kept
                          [0.0, 0.0, 30.0, 80.0]])   # aspect 0.375, IoU 0.44 with the first: kept
    torch.testing.assert_close(filter_proposals(boxes, ProposalFilter()), boxes[[0, 4, 5]])
    assert len(filter_proposals(boxes, ProposalFilter(nms_iou=1.0))) == 4


def test_the_dataset_serves_views_with_filtered_proposals(demo_photos: Path, tmp_path: Path) -> None:
    images = ImageFolderDataset(copy_photos(demo_photos, tmp_path / "images", 3))
    proposals = proposal_dataset(ProposalConfig(proposal_top_k=40), tmp_path / "run", images, None)
    task = _task()
    rules = ProposalFilter()
    dataset = ProposalViewDataset(proposals, task.view_specs(), rules, 0.6, 10)
    torch.manual_seed(0)
    samples = [dataset[index] for index in range(3)]
    for views, boxes in samples:
        assert len(views) == 2 and views[0].image.shape == (3, 64, 64)
        assert torch.equal(filter_proposals(boxes, rules), boxes) and 0 < len(boxes) <= 40
        for view in views:  # each view keeps a box (the demo photos always allow it within 10 draws)
            geometry = ViewGeometry(view.box[None], torch.tensor([view.flipped]), view.image_size[None])
            assert (boxes_in_view(boxes[None], geometry, (64, 64)).visible > 0.6).any()
    batch = collate_proposal_views(samples)
    counts = [len(boxes) for _, boxes in samples]
    assert batch.proposals.shape == (3, max(counts), 4) and batch.proposal_mask.sum(dim=1).tolist() == counts
    assert torch.equal(batch.proposals[1, :counts[1]], samples[1][1])
    assert isinstance(batch.to("cpu"), ProposalViews) and len(batch) == 3


# -- the released step -----------------------------------------------------------------------------------------

LEVEL_NAMES = ("p2", "p3", "p4", "p5")


class FixtureEncoder(nn.Module):
    """:class:`CcopEncoder`'s interface over the fixture's stored features (the release's FPN replaced), with
    our image head and :class:`RoiEmbedding` on the released strides."""

    def __init__(self, fixture: dict[str, torch.Tensor], view: str, options: CcopConfig) -> None:
        super().__init__()
        self.image_head = projection_head(META["c5_channels"], options.hidden_dim, options.feature_dim, 0.0)
        self.rois = RoiEmbedding(META["width"], tuple(META["strides"]), options)
        for name in (*LEVEL_NAMES, "c5"):
            self.register_buffer(name, fixture[f"bank_{view}.{name}"].float())

    def forward(self, images: torch.Tensor) -> Encoded:
        embedding = F.normalize(self.image_head(self.c5.mean(dim=(2, 3))), dim=1)
        return Encoded(embedding, [getattr(self, name) for name in LEVEL_NAMES])


def _released_heads(fixture: dict[str, torch.Tensor], stage: str, side: str) -> dict[str, torch.Tensor]:
    """Our encoder's head tensors from the release's ``img_neck_<side>`` / ``roi_neck_<side>`` of ``stage``
    ("initial" or "final"); both are Linear -> Dropout -> ReLU -> Linear (our indices 0 and 3)."""
    heads = {"img_neck": "image_head", "roi_neck": "rois.head"}
    layers = {"linear_1.0": 0, "last_linear": 3}
    return {f"{ours}.{index}.{kind}": fixture[f"{stage}.{neck}_{side}.mlp.{layer}.{kind}"].float()
            for neck, ours in heads.items() for layer, index in layers.items() for kind in ("weight", "bias")}


RELEASED = CcopConfig(feature_dim=META["roi_neck"]["embed_channels"], hidden_dim=META["roi_neck"]["hid_channels"],
                      head_dropout=0.0, image_queue_length=META["model"]["img_queue_len"],
                      roi_queue_length=META["model"]["roi_queue_len"], momentum=META["model"]["momentum"],
                      num_jitter=META["curriculum"]["n_jitter"], curriculum_steps=META["total_step"])
"""The fixture's released settings as our options (level rule, temperatures, margin: our defaults)."""


def test_one_training_step_matches_the_released_ccop() -> None:
    fixture = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    model = _tiny_model(RELEASED)
    model.encoder, model.momentum_encoder = (FixtureEncoder(fixture, view, RELEASED) for view in ("q", "k"))
    model.encoder.load_state_dict(_released_heads(fixture, "initial", "q"), strict=False)
    model.momentum_encoder.load_state_dict(_released_heads(fixture, "initial", "k"), strict=False)
    model.image_queue.keys.copy_(fixture["initial.img_queue"].T)
    model.roi_queue.keys.copy_(fixture["initial.roi_queue"].T)
    task = _task(RELEASED)

    # The released clock: iter is incremented before use, so the step after START_ITER is START_ITER + 1.
    schedule = task.schedule(META["start_iter"] + 1)
    released_schedule = fixture["jitter.schedule"].tolist()
    assert list(schedule) == pytest.approx(released_schedule, abs=1e-6)
    ema_update_(model.momentum_encoder, model.encoder, RELEASED.momentum, copy_buffers=False)
    for key, value in _released_heads(fixture, "final", "k").items():
        torch.testing.assert_close(model.momentum_encoder.state_dict()[key], value, rtol=0, atol=0)

    counts = torch.tensor(META["box_counts"])
    keep = torch.arange(fixture["boxes"].shape[2]) < counts.unsqueeze(1)
    pairs = BoxPairs(fixture["boxes"][:, 0], fixture["boxes"][:, 1], keep)
    images = torch.zeros(len(counts), 3, META["size"], META["size"])
    # The released generator at its first jitter draw (its key shuffle drew before), and its curriculum values
    # (float32): our draws then reproduce its jittered boxes exactly.
    torch.set_rng_state(fixture["jitter.rng_state"])
    out = model.train()(images, images, pairs, RELEASED.num_jitter, JitterSchedule(*released_schedule))
    with torch.no_grad():
        index = keep.nonzero()[:, 0]
        pooled = multilevel_roi_align(model.encoder(images).levels, pairs.query[keep], index,
                                      assign_levels(pairs.query[keep], META["strides"], 12.0), (224, 224), 7)
        torch.testing.assert_close(pooled.flatten(1), fixture["pooled_query"], rtol=0, atol=0)
    released_invalid = torch.cat([fixture["jitter.invalid0"], fixture["jitter.invalid1"]])
    assert torch.equal(~out.valid, released_invalid) and 0.3 < released_invalid.float().mean() < 0.7
    loss = task.contrast(model, out, pairs)
    close = {"rtol": 1e-5, "atol": 1e-6}
    for ours, theirs in (("loss_image", "loss.img"), ("loss_object", "loss.roi"), ("loss_triplet", "loss.inImg")):
        torch.testing.assert_close(loss.terms[ours], fixture[theirs], **close)
    # The queues: the image keys, and the chosen (hardest) positive of every query box, in image order.
    torch.testing.assert_close(model.image_queue.keys, fixture["final.img_queue"].T, **close)
    torch.testing.assert_close(model.roi_queue.keys, fixture["final.roi_queue"].T, **close)
    assert int(model.image_queue.pointer) == int(fixture["final.img_queue_ptr"]) == 2
    assert int(model.roi_queue.pointer) == int(fixture["final.roi_queue_ptr"]) == sum(META["box_counts"])


def test_jitter_at_the_end_of_the_curriculum_matches_the_release() -> None:
    fixture = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    end = curriculum(1.0, (0.8, 0.4), (0.15, 0.6), (0.35, 1.4))
    boxes = fixture["boxes"][0, 0, :META["box_counts"][0]]
    torch.manual_seed(META["extra_seed"])
    jittered = jitter_boxes(boxes, 10, end.xy_magnitude, end.wh_magnitude, (224, 224))
    torch.testing.assert_close(jittered.flatten(0, 1), fixture["end.boxes"], rtol=0, atol=0)
    assert torch.equal(~jitter_validity(boxes, jittered, end.iou_threshold), fixture["end.invalid"])


# -- the task ------------------------------------------------------------------------------------------------

def _views(images: int, seed: int, counts: list[int] | None = None) -> ProposalViews:
    """Two 64 px views of ``images`` 96 x 96 images (crops (0, 0)-(80, 80) and (16, 16)-(96, 96), the second
    flipped on even images) and ``counts[i]`` random proposals inside their overlap."""
    generator = torch.Generator().manual_seed(seed)
    counts = counts or [3 + (i * 5) % 7 for i in range(images)]
    crops = [torch.randn(images, 3, 64, 64, generator=generator) for _ in range(2)]
    sizes = torch.tensor([[96, 96]] * images)
    geometry = [ViewGeometry(torch.tensor([[0.0, 0.0, 80.0, 80.0]] * images), torch.zeros(images, dtype=torch.bool),
                             sizes),
                ViewGeometry(torch.tensor([[16.0, 16.0, 96.0, 96.0]] * images), torch.arange(images) % 2 == 0, sizes)]
    proposals = torch.zeros(images, max(counts), 4)
    for row, count in enumerate(counts):
        corner = 16 + torch.rand(count, 2, generator=generator) * 40
        proposals[row, :count] = torch.cat((corner, corner + 6 + torch.rand(count, 2, generator=generator) * 18), 1)
    mask = torch.arange(max(counts)) < torch.tensor(counts).unsqueeze(1)
    return ProposalViews(crops, geometry, proposals, mask)


def test_a_step_trains_the_query_side_and_enqueues_the_hardest_positives() -> None:
    model, task = _tiny_model().train(), _task()
    batch = _views(4, seed=0)
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append(out))
    loss = task.compute_loss(model, batch)
    loss.total.backward()
    assert set(loss.terms) == {"loss_image", "loss_object", "loss_triplet", "object_pairs"}
    terms = loss.terms
    torch.testing.assert_close(loss.total.detach(), terms["loss_image"] + terms["loss_object"] + terms["loss_triplet"])
    assert all(float(terms[name]) > 0 for name in ("loss_image", "loss_object", "loss_triplet"))
    pairs = int(batch.proposal_mask.sum())
    assert float(terms["object_pairs"]) * 4 == pairs  # every proposal lies inside both crops
    assert all(param.grad is None for param in model.momentum_encoder.parameters())
    pyramid_grads = [param.grad for param in model.encoder.pyramid.parameters()]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in pyramid_grads)
    assert int(model.image_queue.pointer) == 4 and int(model.roi_queue.pointer) == pairs and int(model.steps) == 1
    # The pushed object keys are, per query box, the valid candidate of least cosine similarity.
    out = outputs[0]
    similarity = torch.einsum("md,mcd->mc", out.roi_query.detach(), out.candidates).masked_fill(~out.valid, 2)
    expected = out.candidates[torch.arange(pairs), similarity.argmin(dim=1)]
    torch.testing.assert_close(model.roi_queue.keys[:pairs], expected)
    # Step 1 of a 10-step curriculum: IoU threshold 0.76; the unjittered candidate is always valid.
    schedule = task.schedule(1)
    assert schedule.iou_threshold == pytest.approx(0.76) and out.valid[:, -1].all()


def test_a_batch_without_pairs_still_trains_the_image_level() -> None:
    model, task = _tiny_model().train(), _task()
    batch = _views(2, seed=1)
    batch.proposal_mask.zero_()
    loss = task.compute_loss(model, batch)
    loss.total.backward()
    assert float(loss.terms["loss_object"]) == float(loss.terms["loss_triplet"]) == 0
    assert torch.isfinite(loss.total) and int(model.roi_queue.pointer) == 0


def test_presets_follow_the_release_and_configure_refuses_what_cannot_run() -> None:
    paper = parse_pretrain_args(["--task", "ccop", "--preset", "paper"])
    assert paper.ccop == CcopConfig() and paper.proposals.proposal_top_k == 100
    assert (paper.crops.num_global, paper.crops.num_local, paper.crops.global_size, paper.crops.global_scale) == (
        2, 0, 224, (0.1, 1.0))
    views = CcopTask(paper).view_specs()
    assert [(v.size, v.scale, v.color_jitter, v.blur_probability, v.solarize_probability) for v in views] == [
        (224, (0.1, 1.0), (0.4, 0.4, 0.2, 0.1), 0.5, 0.0)] * 2
    assert CcopTask.configure(paper) == paper
    model = CcopTask(paper).build_model()
    assert model.pyramid.strides == (8, 16, 32, 64)
    assert model.encoder.rois.head[0].in_features == 256 * 7 * 7 and model.encoder.rois.head[3].out_features == 128
    assert model.encoder.image_head[0].in_features == 2048 and isinstance(model.encoder.image_head[1], nn.Dropout)
    demo = parse_pretrain_args(["--task", "ccop"])
    assert demo.crops.global_size == 64 and demo.ccop.level_cells == 3.0 and CcopTask.configure(demo) == demo
    refused = {
        "exactly two global views": ["--crops.num-local", "2"],
        "color-strength 0.5 would be ignored": ["--crops.color-strength", "0.5"],
        "roi-queue-length must be positive": ["--ccop.roi-queue-length", "0"],
        "num-jitter >= 0": ["--ccop.num-jitter", "-1"],
        "iou-thresholds must lie in": ["--ccop.iou-thresholds", "0.8", "1.2"],
        "wh-jitter must be >= 0": ["--ccop.wh-jitter", "-0.1", "1"],
        "head-dropout": ["--ccop.head-dropout", "1"],
        "part-threshold": ["--ccop.part-threshold", "1"],
    }
    for message, flags in refused.items():
        with pytest.raises(ConfigError, match=message) as info:
            CcopTask.configure(parse_pretrain_args(["--task", "ccop", *flags]))
        assert "\n" not in str(info.value)


def test_pretraining_lowers_the_loss_and_exports_the_trunk_and_the_pyramid(short_pretext_run: ShortRun) -> None:
    # Short queues (real keys after one step), no dropout and large crops: with the released views the
    # image term on 8 photos stays at chance for this short run (tests/tasks/pretext_runs.py).
    run = short_pretext_run("ccop")
    pretrained = run.exported
    losses = scalar_histories(run.output_dir)
    assert len(losses["train/loss"]) == 30 and min(losses["train/object_pairs"]) > 0
    # Step 1 scores against the random initial queues (unusually easy negatives), so it is left out.
    for tag, factor in (("train/loss", 0.9), ("train/loss_object", 0.95), ("train/loss_triplet", 0.5)):
        first, last = sum(losses[tag][1:6]) / 5, sum(losses[tag][-5:]) / 5
        assert last < factor * first, (tag, first, last)
    load_exported_trunk(pretrained, run.output_dir / SWAV_LAYOUT_FILE)
    exported = torch.load(pretrained, weights_only=True)["model"]
    parts = finetune_initialised_parts(pretrained)
    assert parts["input_proj"] == sum(key.startswith("input_proj.") for key in exported) == 12  # 3 x conv + GN
    assert parts["backbone"] == sum(key.startswith("backbone.body.") for key in exported) > 0


# -- two processes ---------------------------------------------------------------------------------------------

def _frozen_norm(model: CcopModel) -> CcopModel:
    """BatchNorm on running statistics: B and 2B images would normalise differently (per-process BN)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


SHARED = replace(TINY, head_dropout=0.0, num_jitter=0)
"""No dropout and no jitter: one process of 2B and two of B then draw nothing differently."""
COUNTS = [9, 7, 8, 6, 2, 3, 1, 4]
"""Proposals per image: rank 0 pushes 30 object keys a step, rank 1 ten."""


def _half(batch: ProposalViews, rank: int) -> ProposalViews:
    rows = slice(4 * rank, 4 * (rank + 1))
    geometry = [ViewGeometry(g.boxes[rows], g.flipped[rows], g.image_sizes[rows]) for g in batch.geometry]
    return ProposalViews([crop[rows] for crop in batch.crops], geometry, batch.proposals[rows],
                         batch.proposal_mask[rows])


def _sharing_worker(rank: int, out: str) -> None:
    model, task, terms = _frozen_norm(_tiny_model(SHARED).train()), _task(SHARED), []
    for step in range(2):
        terms.append(task.compute_loss(model, _half(_views(8, 100 + step, COUNTS), rank)).terms)
    torch.save({"terms": terms, "image_queue": model.image_queue.state_dict(),
                "roi_queue": model.roi_queue.state_dict()}, f"{out}/{rank}.pt")


@pytest.mark.slow
@FORKED_GLOO
@pytest.mark.timeout(120)
def test_two_processes_of_b_share_the_queues_of_one_process_of_2b(tmp_path: Path) -> None:
    """2 x 4 images against 1 x 8: both queues (the object one filled unevenly, 30 + 10 keys a step) and the
    image loss (averaged over processes) are the same; the object and triplet losses are each process's mean
    over its own boxes, i.e. those of one process run on its half with the same queues."""
    run_in_two_processes(_sharing_worker, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    single, task = _frozen_norm(_tiny_model(SHARED).train()), _task(SHARED)
    for step in range(2):
        before = copy.deepcopy(single)
        whole = task.compute_loss(single, _views(8, 100 + step, COUNTS)).terms
        image = sum(rank["terms"][step]["loss_image"] for rank in ranks) / 2
        torch.testing.assert_close(image, whole["loss_image"])
        for rank, result in enumerate(ranks):
            half = task.compute_loss(copy.deepcopy(before), _half(_views(8, 100 + step, COUNTS), rank)).terms
            for term in ("loss_object", "loss_triplet"):
                torch.testing.assert_close(result["terms"][step][term], half[term])
    for result in ranks:
        for name, queue in (("image_queue", single.image_queue), ("roi_queue", single.roi_queue)):
            torch.testing.assert_close(result[name]["keys"], queue.keys)
            assert int(result[name]["pointer"]) == int(queue.pointer)
    # 2 steps of 8 image keys fill the 16-key queue once; 2 x 40 object keys wrap the 64-key queue to row 16.
    assert int(single.image_queue.pointer) == 0 and int(single.roi_queue.pointer) == 2 * sum(COUNTS) % 64 == 16


@pytest.mark.slow
@FORKED_GLOO
def test_two_process_pretraining_script_runs_under_ddp(tmp_path: Path, demo_photos: Path) -> None:
    """Under DDP (a level or the object head may get no gradient on one process), the object queue gathers
    every process's keys."""
    images = copy_photos(demo_photos, tmp_path / "images", 4)
    out = tmp_path / "pre"
    stdout = run_main_in_two_processes(pretrain_main, [
        "--cpu", "--task", "ccop", "--max-steps", "2", "--batch-size", "2", "--log-every", "1", "--preset", "demo",
        "--data", str(images), "--output-dir", str(out)], tmp_path)
    assert "(2 processes)" in stdout
    state = load_training_checkpoint(out / "checkpoint.pth")["model"]
    assert int(state["image_queue.pointer"]) == 2 * 2 * 2 and int(state["steps"]) == 2
    # The main process logs its own pairs (per image); the queue also holds the other process's.
    main_keys = round(sum(2 * pairs for pairs in scalar_histories(out)["train/object_pairs"]))
    assert int(state["roi_queue.pointer"]) > main_keys > 0
