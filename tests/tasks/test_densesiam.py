"""DenseSiam: exact overlap alignment, region pooling, the released heads and losses (golden fixture), the
presets, and a short training run whose export loads as a backbone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detr_ssl.blocks.geometry import overlap_boxes
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.datasets import ImageFolderDataset
from detr_ssl.datasets.multicrop import Views, ViewGeometry, collate_views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.densesiam import region_embeddings
from detr_ssl.tasks.backbone_pretext import build_trunk
from detr_ssl.tasks.densesiam import (
    DenseSiamConfig,
    DenseSiamHeads,
    DenseSiamModel,
    DenseSiamTask,
    align_overlap,
    similarity_losses,
    view_overlaps,
)
from runs import load_exported_trunk

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "densesiam_released"


def _geometry(boxes: list[list[float]], flipped: list[bool]) -> ViewGeometry:
    return ViewGeometry(torch.tensor(boxes), torch.tensor(flipped), torch.tensor([[100, 100]] * len(boxes)))


def _task(**options) -> DenseSiamTask:
    config = DenseSiamTask.preset_config("demo")
    return DenseSiamTask(replace(config, densesiam=replace(config.densesiam, **options)))


@pytest.mark.parametrize("grid", [8, 4])
def test_the_overlap_of_two_crops_is_aligned_exactly_across_scales_and_flips(grid: int) -> None:
    """A feature map that *is* the image (one cell per pixel in view a, 2x2 per pixel in the flipped view b):
    both RoIAligned grids must be the image's overlap itself (average-pooled when the grid is coarser)."""
    image = torch.randn(1, 5, 16, 16)
    maps_a = image[..., 0:12, 0:12]  # crop (0, 0, 12, 12) seen at 12 px
    maps_b = F.interpolate(image[..., 4:16, 4:16], scale_factor=2, mode="nearest").flip(-1)  # (4, 4, 16, 16), 24 px
    a, b = _geometry([[0, 0, 12, 12]], [False]), _geometry([[4, 4, 16, 16]], [True])
    in_a, in_b, valid = overlap_boxes(a.boxes, a.flipped, (12, 12), b.boxes, b.flipped, (24, 24))
    aligned_a = align_overlap(maps_a, in_a, a.flipped, (12, 12), grid)
    aligned_b = align_overlap(maps_b, in_b, b.flipped, (24, 24), grid)
    expected = F.avg_pool2d(image[..., 4:12, 4:12], 8 // grid)
    assert bool(valid.all())
    torch.testing.assert_close(aligned_a, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(aligned_b, expected, rtol=0, atol=1e-6)


def test_a_view_compared_with_itself_aligns_exactly_and_its_pixel_loss_is_minus_one() -> None:
    torch.manual_seed(0)
    model = DenseSiamModel(build_trunk("resnet18"), DenseSiamConfig()).train()
    model.heads.predictor = nn.Identity()  # the prediction is the projection itself
    geometry = _geometry([[10, 5, 70, 65], [30, 20, 90, 80]], [False, True])
    crops = torch.randn(2, 3, 64, 64)
    views = Views([crops, crops], [geometry, geometry])
    overlaps, flipped, valid = view_overlaps(views)
    assert bool(valid.all())
    torch.testing.assert_close(overlaps[0], torch.tensor([[0.0, 0, 64, 64]] * 2))  # the whole view
    first, second = model((crops, crops), overlaps, flipped)
    torch.testing.assert_close(first.projection, second.projection, rtol=0, atol=0)
    loss = _task(region_start_step=1).compute_loss(model, views)
    torch.testing.assert_close(loss.terms["loss_pixel"], torch.tensor(-1.0))
    torch.testing.assert_close(loss.total.detach(), loss.terms["loss_pixel"])  # RegionSim not started yet
    assert int(model.batches_seen) == 1 and "batches_seen" in model.state_dict()


def test_region_embeddings_are_the_soft_mask_weighted_sum_or_mean() -> None:
    features, logits = torch.randn(2, 4, 3, 5), torch.randn(2, 6, 3, 5)
    masks = logits.softmax(dim=1)
    total = torch.zeros(2, 6, 4)
    for b in range(2):
        for k in range(6):
            for y in range(3):
                for x in range(5):
                    total[b, k] += masks[b, k, y, x] * features[b, :, y, x]
    torch.testing.assert_close(region_embeddings(features, logits, "sum"), total)
    mean = total / masks.sum(dim=(2, 3)).unsqueeze(-1)
    torch.testing.assert_close(region_embeddings(features, logits, "mean"), mean)


def test_pairs_without_overlap_give_a_zero_loss_still_connected_to_every_head() -> None:
    torch.manual_seed(0)
    task = _task()
    model = task.build_model().train()
    views = Views([torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)],
                  [_geometry([[0, 0, 40, 40]] * 2, [False, True]), _geometry([[50, 50, 90, 90]] * 2, [True, False])])
    loss = task.compute_loss(model, views)
    loss.total.backward()
    assert float(loss.total.detach()) == 0.0
    assert all(param.grad is not None and not param.grad.any() for param in model.heads.parameters())


def test_the_released_heads_and_losses_are_reproduced() -> None:
    """Golden numbers of the released projector, predictor, CESimilarity PixSim and kernel_contrast RegionSim
    (tests/fixtures/densesiam_released, 16-channel features on a 6x6 grid, 27 regions)."""
    released = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    options = DenseSiamConfig(hidden_dim=16, region_dim=16, pixel_loss="cross-entropy")
    heads = DenseSiamHeads(16, options).train()
    state = {key.removeprefix("heads.").replace("kernel_", "region_"): value
             for key, value in released.items() if key.startswith("heads.")}
    missing, unexpected = heads.load_state_dict(state, strict=False)
    extra_biases = {"projector.0.bias", "projector.3.bias", "predictor.0.bias", "region_predictor.0.bias"}
    assert not unexpected and {key for key in missing if "running" not in key and "batches" not in key} == extra_biases
    with torch.no_grad():  # biases the release omits: the BatchNorm right after them cancels any value
        for key in extra_biases:
            heads.get_parameter(key).fill_(0.5)
    features = [released[f"feats_v{view}"].clone().requires_grad_() for view in (1, 2)]
    outputs = [heads(f, heads.projector(f)) for f in features]
    pixel, region = similarity_losses(*outputs, options)
    grads = torch.autograd.grad(pixel + region, features)

    tolerance = {"rtol": 1e-5, "atol": 1e-5}
    for view, output in zip((1, 2), outputs):
        torch.testing.assert_close(output.projection, released[f"z{view}"], **tolerance)
        torch.testing.assert_close(output.prediction, released[f"p{view}"], **tolerance)
        torch.testing.assert_close(grads[view - 1], released[f"grad_feats_v{view}"], **tolerance)
    torch.testing.assert_close(pixel, released["loss_pixel"], **tolerance)
    torch.testing.assert_close(region, released["loss_region"], **tolerance)


def test_our_defaults_are_the_released_ones() -> None:
    released = json.loads((FIXTURE / "meta.json").read_text())["released_options"]
    ours = DenseSiamConfig()
    assert (ours.num_regions, ours.hidden_dim, ours.region_dim) == (
        released["num_classes"], released["hid_channels"], released["out_channels"])
    assert (ours.temperature, ours.pixel_weight, ours.region_weight) == (
        released["kernel_temp"], released["loss_simsiam_weight"], released["loss_kernel_cross_weight"])
    heads = DenseSiamHeads(512, ours)
    convs = [m for m in heads.projector if isinstance(m, nn.Conv2d)]
    linears = [m for m in heads.region_projector if isinstance(m, nn.Linear)]
    assert len(convs) == released["num_proj_convs"] + 1 and len(linears) == released["num_kernel_proj_convs"] + 1
    assert not heads.projector[-1].affine and not heads.region_projector[-1].affine  # final BN, no affine


def test_presets_use_simsiam_views_and_refuse_others() -> None:
    demo = parse_pretrain_args(["--task", "densesiam"])
    assert (demo.crops.num_global, demo.crops.num_local, demo.crops.global_size) == (2, 0, 64)
    assert demo.crops.global_scale == (0.2, 1.0) and demo.crops.color_strength == 0.5
    assert DenseSiamTask.configure(demo) == demo
    paper = parse_pretrain_args(["--task", "densesiam", "--preset", "paper"])
    assert paper.crops.global_size == 224 and paper.densesiam == DenseSiamConfig()
    flagged = parse_pretrain_args(["--task", "densesiam", "--densesiam.pixel-loss", "cross-entropy"])
    assert flagged.densesiam.pixel_loss == "cross-entropy"
    with pytest.raises(ConfigError, match="exactly two global views"):
        DenseSiamTask.configure(parse_pretrain_args(["--task", "densesiam", "--crops.num-local", "2"]))
    with pytest.raises(ConfigError, match="num-regions"):
        DenseSiamTask.configure(parse_pretrain_args(["--task", "densesiam", "--densesiam.num-regions", "1"]))


def test_training_lowers_both_terms_and_the_export_loads_as_a_backbone(demo_photos: Path, tmp_path: Path,
                                                                       one_thread) -> None:
    """Eight real photos through the task's own views (geometry from the data pipeline), 10 AdamW steps."""
    torch.manual_seed(0)
    task = DenseSiamTask(DenseSiamTask.preset_config("demo"))  # 64 px views, resnet18
    dataset = task.build_dataset(ImageFolderDataset(demo_photos))
    views = collate_views([dataset[index] for index in range(8)])
    model = task.build_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    terms = []
    for _ in range(10):
        loss = task.compute_loss(model, views)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        terms.append(torch.stack([loss.total.detach(), loss.terms["loss_pixel"], loss.terms["loss_region"]]))
    first, last = torch.stack(terms[:3]).mean(dim=0), torch.stack(terms[-3:]).mean(dim=0)
    assert bool((last < first - 0.1).all()), (first, last)  # total, PixSim and RegionSim all fell

    exported, layout = task.export(model, tmp_path)
    assert {"module.projector.0.weight", "module.region_predictor.3.weight"} <= torch.load(layout, weights_only=True).keys()
    trunk = load_exported_trunk(exported, layout)
    torch.testing.assert_close(trunk.state_dict()["layer4.1.bn2.running_var"],
                               model.trunk.state_dict()["layer4.1.bn2.running_var"])
