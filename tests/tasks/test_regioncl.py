"""RegionCL-M: the pasted box and composites, region pooling, the released training step (pinned by
tests/fixtures/regioncl_released), presets, a pretraining run whose export loads as a backbone, and two
processes sharing one queue."""

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

from launch import FORKED_GLOO, run_in_two_processes, run_main_in_two_processes

from detr_ssl.cli.pretrain import main as pretrain_main, parse_pretrain_args
from detr_ssl.datasets.multicrop import Views
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.errors import ConfigError
from detr_ssl.models.teachers import build_teacher, load_swav_state_dict
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, build_trunk
from detr_ssl.tasks.regioncl import (
    RegionClConfig,
    RegionClModel,
    RegionClTask,
    draw_paste_box,
    paste_reversed,
)
from pretext_runs import ShortRun
from runs import scalar_histories

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "regioncl_released"
META = json.loads((FIXTURE / "meta.json").read_text())
TINY = RegionClConfig(feature_dim=8, hidden_dim=32, queue_length=24, min_box_cells=1, max_box_cells=1)


def _tiny_model(options: RegionClConfig = TINY, seed: int = 0) -> RegionClModel:
    """The fixture's tiny ResNet (16 C5 channels, stride 32) with RegionCL's heads."""
    torch.manual_seed(seed)
    return RegionClModel(ResNet(BasicBlock, num_classes=0, **META["trunk"]), options)


def _task(options: RegionClConfig = TINY) -> RegionClTask:
    return RegionClTask(replace(RegionClTask.preset_config("demo"), regioncl=options))


@pytest.mark.parametrize(("size", "low", "high"), [(224, 3, 5), (64, 1, 1), (160, 1, 3)])
def test_box_is_on_the_grid_and_holds_the_reversed_images_pixels(size: int, low: int, high: int) -> None:
    images = torch.randn(5, 3, size, size)
    sides = set()
    for seed in range(30):
        torch.manual_seed(seed)
        box = draw_paste_box(size, low, high)
        rows, columns = box.pixels()
        for span in (rows, columns):
            assert span.start % 32 == 0 and span.stop % 32 == 0 and 0 <= span.start < span.stop <= size
            assert low * 32 <= span.stop - span.start <= high * 32
            sides.add(span.stop - span.start)
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[rows, columns] = True
        reversed_batch = images[[4, 3, 2, 1, 0]]
        assert torch.equal(paste_reversed(images, box), torch.where(inside, reversed_batch, images))
    assert sides == {32 * cells for cells in range(low, high + 1)}


def test_box_draw_is_the_released_one_clamped_onto_the_grid() -> None:
    """Released (left, top, width, height) / 32 per seed: where its clamp puts the box one pixel off the
    grid (size - 1 - box), ours is that pixel + 1 (size - box); elsewhere they are equal."""
    released = torch.load(FIXTURE / "fixture.pt", weights_only=True)["box_draws"]
    clamped = 0
    for seed, (x, y, width, height) in enumerate(released.tolist()):
        torch.manual_seed(seed)
        ours = draw_paste_box(224, 3, 5)
        assert (ours.width, ours.height) == (width, height)
        for mine, theirs, side in ((ours.x, x, width), (ours.y, y, height)):
            if theirs != int(theirs):
                clamped += 1
                assert mine * 32 == theirs * 32 + 1 == 224 - side * 32
            else:
                assert mine == theirs
    assert 0 < clamped < 2 * len(released)


def test_regions_are_masked_means_of_the_c5_features() -> None:
    model = _tiny_model(replace(TINY, min_box_cells=2, max_box_cells=3)).eval()
    paste_mask = torch.zeros(5, 5)
    paste_mask[2:4, 1:4] = 1
    composites = torch.randn(3, 3, 160, 160)
    canvas, paste = model.encoder.regions(composites, paste_mask)
    with torch.no_grad():
        features = model.trunk.forward_features(composites)
        assert features.shape[-2:] == (5, 5)
        inside = features[:, :, 2:4, 1:4]
        outside_mean = (features.sum(dim=(2, 3)) - inside.sum(dim=(2, 3))) / (25 - 6)
        head = model.encoder.projection_head
        torch.testing.assert_close(canvas, F.normalize(head(outside_mean), dim=1))
        torch.testing.assert_close(paste, F.normalize(head(inside.mean(dim=(2, 3))), dim=1))


RELEASED = RegionClConfig(feature_dim=META["neck"]["out_channels"], hidden_dim=META["neck"]["hid_channels"],
                          queue_length=META["model"]["queue_len"], momentum=META["model"]["momentum"],
                          temperature=META["temperature"], min_box_cells=META["model"]["cutMixLower"],
                          max_box_cells=META["model"]["cutMixUpper"] - 1)
"""The fixture's released settings as our options (the release's cutMixUpper is exclusive)."""


def _fixture_model(fixture: dict[str, torch.Tensor]) -> RegionClModel:
    """Our model with the released initial weights and queue."""
    model = _tiny_model(RELEASED)
    names = {"encoder_q.0.trunk.": "trunk.", "encoder_q.1.mlp.": "projection_head."}
    state = {}
    for key, value in fixture.items():
        for theirs, ours in names.items():
            if key.startswith("initial." + theirs):
                state[ours + key.removeprefix("initial." + theirs)] = value
    model.encoder.load_state_dict(state)
    model.momentum_encoder.load_state_dict(state)
    model.queue.keys.copy_(fixture["initial_queue"].T)
    return model


def _upsample(low: torch.Tensor) -> torch.Tensor:
    factor = META["upsample"]
    return low.float().repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)


def test_training_steps_match_the_released_regionclm() -> None:
    fixture = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    model = _fixture_model(fixture).train()
    images = _upsample(fixture["images_lowres"])
    views = Views([images[:, 0], images[:, 1]])
    task = _task(RELEASED)
    optimizer = torch.optim.SGD(model.encoder.parameters(), lr=META["learning_rate"])
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append((args, out)))
    close = {"rtol": 1e-4, "atol": 1e-5}
    for step, seed in enumerate(META["step_seeds"]):
        torch.manual_seed(seed)
        loss = task.compute_loss(model, views)
        optimizer.zero_grad()
        loss.total.backward()
        (_, composites, _, paste_mask), out = outputs[step]
        released = {name: fixture[f"step{step}.{name}"] for name in ("canvas", "paste_shuffle", "query", "key")}
        x, y, width, height = fixture[f"step{step}.box"].long().tolist()
        assert paste_mask.nonzero().min(dim=0).values.tolist() == [y, x]
        assert paste_mask.nonzero().max(dim=0).values.tolist() == [y + height - 1, x + width - 1]
        assert paste_mask.sum() == width * height
        if step == 0:
            assert torch.equal(composites, _upsample(fixture["step0.composite_lowres"]))
            parameters = dict(model.named_parameters())
            for name in META["gradients"]:
                ours = name.replace("encoder_q.0.", "encoder.").replace("encoder_q.1.mlp.", "encoder.projection_head.")
                torch.testing.assert_close(parameters[ours].grad, fixture[f"step0.grad.{name}"], **close)
        # The release's paste_shuffle is in composite order, like ours; its keys are already normalised.
        for ours, theirs in ((out.canvas, "canvas"), (out.paste, "paste_shuffle"), (out.query, "query"),
                             (out.key, "key")):
            torch.testing.assert_close(ours, F.normalize(released[theirs], dim=1), **close)
        for term in ("loss_instance", "loss_region"):
            torch.testing.assert_close(loss.terms[term], fixture[f"step{step}.{term}"], **close)
        optimizer.step()
    torch.testing.assert_close(model.queue.keys, fixture["final.queue"].T, **close)
    assert int(model.queue.pointer) == int(fixture["final.queue_ptr"])
    key_state = model.momentum_encoder.state_dict()
    torch.testing.assert_close(key_state["trunk.conv1.0.weight"], fixture["final.key_conv1"], **close)
    torch.testing.assert_close(key_state["projection_head.2.weight"], fixture["final.key_mlp2"], **close)


def test_loss_trains_the_query_encoder_only_and_enqueues_the_keys() -> None:
    model = _tiny_model().train()
    torch.manual_seed(1)
    views = Views([torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)])
    loss = _task().compute_loss(model, views)
    loss.total.backward()
    assert set(loss.terms) == {"loss_instance", "loss_region"} and torch.isfinite(loss.total)
    torch.testing.assert_close(loss.total.detach(), loss.terms["loss_instance"] + loss.terms["loss_region"])
    assert all(param.grad is None for param in model.momentum_encoder.parameters())
    assert all(param.grad is not None for param in model.encoder.parameters())
    assert int(model.queue.pointer) == 4
    with torch.no_grad():  # the key encoder is deterministic in train mode: same batch, same keys
        torch.testing.assert_close(model.queue.keys[:4], model.momentum_encoder(views.crops[1]))


def test_presets_follow_the_release_and_configure_refuses_what_cannot_run() -> None:
    demo = parse_pretrain_args(["--task", "regioncl"])
    assert (demo.crops.num_global, demo.crops.num_local, demo.crops.global_size) == (2, 0, 64)
    assert (demo.regioncl.min_box_cells, demo.regioncl.max_box_cells, demo.regioncl.queue_length) == (1, 1, 32)
    assert RegionClTask.configure(demo) == demo
    paper = parse_pretrain_args(["--task", "regioncl", "--preset", "paper"])
    assert (paper.crops.num_global, paper.crops.num_local, paper.crops.global_size) == (2, 0, 224)
    views = RegionClTask(paper).view_specs()
    assert [(view.size, view.scale, view.color_jitter, view.blur_probability) for view in views] == [
        (224, (0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.5)] * 2
    assert paper.regioncl == RegionClConfig() and RegionClTask.configure(paper) == paper
    refused = {
        "exactly two global views": ["--crops.num-local", "2"],
        "multiple of 32": ["--crops.global-size", "80"],
        "max-box-cells \\(2\\) < 2": ["--regioncl.max-box-cells", "2"],
        "min-box-cells \\(3\\) <= --regioncl.max-box-cells \\(1\\)": ["--regioncl.min-box-cells", "3"],
        "queue-length": ["--regioncl.queue-length", "0"],
        "--batch-size 1": ["--batch-size", "1"],
    }
    for message, flags in refused.items():
        with pytest.raises(ConfigError, match=message):
            RegionClTask.configure(parse_pretrain_args(["--task", "regioncl", *flags]))


def test_pretraining_lowers_the_loss_and_exports_a_backbone(short_pretext_run: ShortRun) -> None:
    # 64 px views, resnet18, a one-cell box. Mild views (large crops, no colour jitter): with MoCo v2's, the
    # instance loss on 8 photos stays near chance for the first hundred steps (as DenseCL's global term does).
    # A queue of one batch: real keys only after step 1.
    run = short_pretext_run("regioncl").output_dir
    losses = scalar_histories(run)
    assert len(losses["train/loss"]) == 30
    # Step 1 scores against the random initial queue (unusually easy negatives), so it is left out.
    for tag, factor in (("train/loss", 0.85), ("train/loss_instance", 0.95), ("train/loss_region", 0.95)):
        first, last = sum(losses[tag][1:6]) / 5, sum(losses[tag][-5:]) / 5
        assert last < factor * first, (tag, first, last)

    # Both files hold the same trained trunk; the layout file adds the projection head and loads as a teacher.
    ours = torch.load(run / "pretrained.pth", weights_only=True)["model"]
    layout = torch.load(run / SWAV_LAYOUT_FILE, weights_only=True)
    assert {"module.projection_head.0.weight", "module.projection_head.2.weight"} <= layout.keys()
    for key, value in ours.items():
        assert torch.equal(layout[key.replace("backbone.body.", "module.")], value), key
    trunk = build_trunk("resnet18").eval()
    missing, unexpected = trunk.load_state_dict(load_swav_state_dict(run / SWAV_LAYOUT_FILE, "resnet18"), strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
    crops = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(build_teacher(run / SWAV_LAYOUT_FILE, "resnet18")(crops), trunk(crops))


def _frozen_norm(model: RegionClModel) -> RegionClModel:
    """BatchNorm on its running statistics: with batch statistics B and 2B images normalise differently
    (per-process BN, by design), which would hide what the queue and the pairing do."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def _two_process_views(step: int) -> Views:
    generator = torch.Generator().manual_seed(100 + step)
    return Views([torch.randn(8, 3, 64, 64, generator=generator) for _ in range(2)])


def _half(views: Views, rank: int) -> Views:
    return Views([crop[4 * rank:4 * (rank + 1)] for crop in views.crops])


def _sharing_worker(rank: int, out: str) -> None:
    model, task, terms = _frozen_norm(_tiny_model().train()), _task(), []
    for step in range(2):
        torch.manual_seed(step)  # as the engine's common seed: the same box on both processes
        terms.append(task.compute_loss(model, _half(_two_process_views(step), rank)).terms)
    torch.save({"terms": terms, "queue": model.queue.state_dict()}, f"{out}/{rank}.pt")


@pytest.mark.slow
@FORKED_GLOO
@pytest.mark.timeout(120)
def test_two_processes_of_b_share_the_queue_of_one_process_of_2b(tmp_path: Path) -> None:
    """2 x 4 images against 1 x 8: the queue and the instance loss (averaged over processes) are the same;
    the region loss is each process's own (its box comes from its own reversed batch), i.e. that of one
    process run on its half with the same queue. Step 2 scores against the keys both processes pushed."""
    run_in_two_processes(_sharing_worker, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    single, task = _frozen_norm(_tiny_model().train()), _task()
    for step in range(2):
        before = copy.deepcopy(single)
        torch.manual_seed(step)
        whole = task.compute_loss(single, _two_process_views(step)).terms
        instance = sum(rank["terms"][step]["loss_instance"] for rank in ranks) / 2
        torch.testing.assert_close(instance, whole["loss_instance"])
        for rank, result in enumerate(ranks):
            torch.manual_seed(step)
            half = task.compute_loss(copy.deepcopy(before), _half(_two_process_views(step), rank)).terms
            torch.testing.assert_close(result["terms"][step]["loss_region"], half["loss_region"])
    for result in ranks:
        torch.testing.assert_close(result["queue"]["keys"], single.queue.keys)
        assert int(result["queue"]["pointer"]) == int(single.queue.pointer) == 16


@pytest.mark.slow
@FORKED_GLOO
def test_two_process_pretraining_script_runs_under_ddp(tmp_path: Path, demo_photos: Path) -> None:
    out = tmp_path / "pre"
    stdout = run_main_in_two_processes(pretrain_main, ["--cpu", "--task", "regioncl", "--max-steps", "2",
                                                       "--batch-size", "4", "--regioncl.queue-length", "48",
                                                       "--output-dir", str(out)], tmp_path)
    assert "(2 processes)" in stdout
    # 2 steps x 2 processes x 4 keys on every process (8 if each kept only its own keys).
    assert int(load_training_checkpoint(out / "checkpoint.pth")["model"]["queue.pointer"]) == 16
    assert build_teacher(out / SWAV_LAYOUT_FILE, "resnet18").dim == 512
