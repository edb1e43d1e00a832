"""SCFS: the feature search (cosine attention that peaks where the local crop's feature was copied from),
DINO's loss and schedules, the released training loop (pinned by tests/fixtures/scfs_released), presets and
refused flags, a pretraining run whose export loads, and two processes sharing the centres."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from launch import FORKED_GLOO, run_in_two_processes, run_main_in_two_processes

from detr_ssl.blocks.momentum import cosine_momentum
from detr_ssl.cli.pretrain import main as pretrain_main, parse_pretrain_args
from detr_ssl.datasets.multicrop import Views
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.errors import ConfigError
from detr_ssl.losses.dino import DinoLoss, teacher_temperature
from detr_ssl.losses.scfs import search, search_attention
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, RunBatches, build_trunk
from detr_ssl.tasks.scfs import DinoHead, ScfsConfig, ScfsModel, ScfsTask
from pretext_runs import ShortRun
from runs import load_exported_trunk, scalar_histories

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "scfs_released"
META = json.loads((FIXTURE / "meta.json").read_text())
RELEASED = ScfsConfig(
    out_dim=META["dino_head"]["out_dim"], hidden_dim=META["dino_head"]["hidden_dim"],
    bottleneck_dim=META["dino_head"]["bottleneck_dim"], layer_out_dim=META["stage_head"]["out_dim"],
    layer_hidden_dim=META["stage_head"]["hidden_dim"], layer_bottleneck_dim=META["stage_head"]["bottleneck_dim"],
    momentum=META["momentum"], warmup_teacher_temperature=META["temperatures"]["warmup_teacher_temp"],
    teacher_temperature=META["temperatures"]["teacher_temp"],
    warmup_teacher_temperature_epochs=META["temperatures"]["warmup_teacher_temp_epochs"])
"""The fixture's released settings as our options (student temperature, centre momentum and the frozen
first epoch are the defaults of both)."""
STAGES = ("c3", "c4", "c5")
#: The release's module names -> ours.
NAMES = {"backbone.model.": "trunk.", "head.": "head.", "layer2_head.": "stage_heads.0.",
         "layer3_head.": "stage_heads.1.", "layer4_head.": "stage_heads.2."}


def _ours(name: str) -> str:
    return next(ours + name.removeprefix(theirs) for theirs, ours in NAMES.items() if name.startswith(theirs))


def _tiny_model(options: ScfsConfig = RELEASED, seed: int = 0) -> ScfsModel:
    """The fixture's tiny ResNet (C3-C5: 8, 12, 16 channels) with SCFS's heads."""
    torch.manual_seed(seed)
    return ScfsModel(ResNet(BasicBlock, num_classes=0, **META["trunk"]), options)


def _task(options: ScfsConfig = RELEASED, num_local: int = 3, batches_per_epoch: int = 1,
          total_batches: int = 3) -> ScfsTask:
    base = ScfsTask.preset_config("demo")
    task = ScfsTask(replace(base, scfs=options, crops=replace(base.crops, num_local=num_local)))
    task.run_batches = RunBatches(batches_per_epoch, total_batches)
    return task


# -- the feature search -------------------------------------------------------------------------------------


def test_search_attention_is_the_cosine_and_peaks_exactly_where_the_crop_was_copied_from() -> None:
    """A local crop whose feature map is a copy of a region of the global view's map (the region's cells all
    hold one feature): its attention is 1 on exactly that region and below 1 everywhere else. As released the
    attention is the plain cosine map: not a softmax, so it does not sum to 1."""
    torch.manual_seed(0)
    batch, crops, channels, size = 3, 2, 16, 6
    global_map = torch.randn(batch, channels, size, size)
    regions = [(slice(1, 3), slice(2, 5)), (slice(4, 6), slice(0, 3))]
    local_maps = []
    for rows, columns in regions:  # an object filling each region; crop-major: crop 0 of every image, then crop 1
        global_map[:, :, rows, columns] = torch.randn(batch, channels, 1, 1)
        local_maps.append(global_map[:, :, rows, columns].clone())
    attention, searched = search(torch.cat(local_maps), global_map)
    assert attention.shape == (crops * batch, 1, size, size)
    for crop, (rows, columns) in enumerate(regions):
        crop_attention = attention[crop * batch:(crop + 1) * batch, 0]
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[rows, columns] = True
        torch.testing.assert_close(crop_attention[:, inside], torch.ones(batch, int(inside.sum())))
        assert (crop_attention[:, ~inside] < 1 - 1e-3).all()
        expected = F.cosine_similarity(local_maps[crop].mean(dim=(2, 3))[:, :, None, None], global_map, dim=1)
        torch.testing.assert_close(crop_attention, expected)
        torch.testing.assert_close(searched[crop * batch:(crop + 1) * batch],
                                   crop_attention.unsqueeze(1) * global_map)
    assert not torch.allclose(attention.sum(dim=(2, 3)), torch.ones(crops * batch, 1))


def test_search_refuses_crops_that_do_not_tile_the_batch() -> None:
    with pytest.raises(ValueError, match="whole number"):
        search(torch.randn(5, 4, 2, 2), torch.randn(2, 4, 3, 3))


def test_a_local_crop_copied_from_the_global_view_is_found_there_by_the_trunk() -> None:
    """End to end through a random ResNet-18: each image's global view is four textured quadrants and its
    local crop an exact pixel copy of one of them; at C3 and C4 (8x8 and 4x4 cells at 64 px) the attention
    over the first global view peaks inside that quadrant. (At C5 the 2x2 cells each see the whole view.)"""
    torch.manual_seed(3)
    options = ScfsConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, layer_out_dim=8, layer_hidden_dim=16,
                         layer_bottleneck_dim=8)
    model = ScfsModel(build_trunk("resnet18"), options).eval()
    batch = 4
    quadrants = torch.randn(batch, 4, 3, 1, 1) + torch.randn(batch, 4, 3, 32, 32) * torch.rand(batch, 4, 1, 1, 1)
    global_view = torch.cat([torch.cat([quadrants[:, 0], quadrants[:, 1]], dim=-1),
                             torch.cat([quadrants[:, 2], quadrants[:, 3]], dim=-1)], dim=-2)
    copied = torch.tensor([0, 1, 2, 3])
    local_view = quadrants[torch.arange(batch), copied]
    with torch.no_grad():
        out = model([global_view, torch.randn_like(global_view)], [local_view])
    for attention in out.attention[:2]:
        side = attention.shape[-1]
        peak = attention.flatten(1).argmax(dim=1)
        quadrant = (peak // side >= side // 2).long() * 2 + (peak % side >= side // 2).long()
        assert torch.equal(quadrant, copied), side


def test_the_model_searches_the_first_global_view_with_the_students_pooled_local_features() -> None:
    model = _tiny_model().train()
    torch.manual_seed(1)
    globals_ = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    locals_ = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    out = model(globals_, locals_)
    for stage, attention in enumerate(out.attention):
        first_view = out.teacher_global.maps[stage][:2]
        torch.testing.assert_close(attention, search_attention(out.student_local.maps[stage],
                                                               first_view.repeat(3, 1, 1, 1)))
        assert not out.targets[stage].requires_grad and out.student_local.stages[stage].requires_grad
        torch.testing.assert_close(out.targets[stage].norm(dim=1), torch.ones(6))


# -- DINO's loss, schedules and head ------------------------------------------------------------------------


def test_dino_loss_pairs_every_teacher_view_with_every_other_student_view_and_moves_the_centre() -> None:
    torch.manual_seed(0)
    loss_fn = DinoLoss(5, student_temperature=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, 5))
    center = loss_fn.center.clone()
    student = [torch.randn(4, 5) for _ in range(4)]
    teacher = [torch.randn(4, 5) for _ in range(2)]
    loss = loss_fn(student, teacher, 0.05)
    terms = []
    for index, target in enumerate(teacher):
        probabilities = F.softmax((target - center) / 0.05, dim=1)
        terms += [F.cross_entropy(logits / 0.1, probabilities) for view, logits in enumerate(student) if view != index]
    assert len(terms) == 6
    torch.testing.assert_close(loss, sum(terms) / 6)
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True))
    loss_fn.eval()(student, teacher, 0.05)  # evaluation leaves the centre alone
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True))


def test_schedules_are_the_released_ones() -> None:
    fixture = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    launch = META["launch_temperatures"]
    released = fixture["launch_teacher_temperature"]
    assert len(released) == launch["nepochs"]
    ours = [teacher_temperature(epoch, launch["warmup_teacher_temp"], launch["teacher_temp"],
                                launch["warmup_teacher_temp_epochs"]) for epoch in range(len(released))]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), released)
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07 and teacher_temperature(5, 0.04, 0.07, 1) == 0.07
    momentum = fixture["momentum_0.996_4x5"]
    ours = [cosine_momentum(0.996, step, len(momentum)) for step in range(len(momentum))]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), momentum)


def test_the_dino_head_with_batch_norm_and_a_trained_norm_is_the_released_one() -> None:
    fixture = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    options = replace(RELEASED, use_bn_in_head=True, norm_last_layer=False)
    head = DinoHead(fixture["head_bn.input"].shape[1], options).train()
    prefix = "head_bn.state."
    head.load_state_dict({k.removeprefix(prefix): v for k, v in fixture.items() if k.startswith(prefix)})
    assert head.last_layer.weight_g.requires_grad
    torch.testing.assert_close(head(fixture["head_bn.input"]), fixture["head_bn.output"])
    assert not DinoHead(16, RELEASED).last_layer.weight_g.requires_grad  # norm_last_layer (default): fixed norm


def test_the_last_layer_is_frozen_for_the_first_epochs_only() -> None:
    model, task = _tiny_model().train(), _task(replace(RELEASED, freeze_last_layer_epochs=2), batches_per_epoch=2,
                                                total_batches=10)
    torch.manual_seed(2)
    views = Views([torch.randn(2, 3, 64, 64) for _ in range(2)] + [torch.randn(2, 3, 32, 32) for _ in range(3)])
    last = model.student.head.last_layer.weight_v
    for batch in range(5):
        model.zero_grad()
        task.compute_loss(model, views).total.backward()
        assert (last.grad.abs().max() > 0) == (batch >= 4), batch  # epochs 0 and 1 are batches 0 to 3
        assert model.student.head.mlp[0].weight.grad.abs().max() > 0


# -- the released training loop -----------------------------------------------------------------------------


def _fixture_model(fixture: dict[str, torch.Tensor]) -> ScfsModel:
    """Our model with the released initial student, the teacher a copy."""
    model = _tiny_model()
    initial = {_ours(k.removeprefix("initial.")): v for k, v in fixture.items() if k.startswith("initial.")}
    missing, unexpected = model.student.load_state_dict(initial, strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
    model.teacher.load_state_dict(model.student.state_dict())
    return model


def _upsample(low: torch.Tensor) -> torch.Tensor:
    factor = META["upsample"]
    return low.float().repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)


@pytest.mark.usefixtures("one_thread")  # as the fixture was made: reduction order depends on the thread count
def test_training_steps_match_the_released_scfs() -> None:
    """Three steps (epochs 0, 1, 2: the teacher-temperature warm-up and the frozen first epoch) of the released
    loop with plain SGD: every output, loss term and centre, the first step's gradients, the teacher at the end.
    The first step is exact to float round-off; later ones drift by round-off amplified by the tiny BatchNorm
    batches and the sharp temperatures (~1e-4 by step 3)."""
    fixture = torch.load(FIXTURE / "fixture.pt", weights_only=True)
    model = _fixture_model(fixture).train()
    views = Views([_upsample(view) for view in fixture["global_lowres"]] +
                  [_upsample(view) for view in fixture["local_lowres"]])
    task = _task(num_local=META["local_crops"], total_batches=META["steps"])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=META["sgd_lr"])
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append(out))
    for step, atol in zip(range(META["steps"]), (1e-6, 3e-5, 5e-4), strict=True):
        close = {"rtol": 1e-4, "atol": atol}
        loss = task.compute_loss(model, views)
        optimizer.zero_grad()
        loss.total.backward()
        released = {k.removeprefix(f"step{step}."): v for k, v in fixture.items() if k.startswith(f"step{step}.")}
        torch.testing.assert_close(loss.total.detach(), released["loss"], **close)
        for term, value in loss.terms.items():
            torch.testing.assert_close(value, released[term], **close)
        out = outputs[step]
        torch.testing.assert_close(torch.cat([out.student_global.dino, out.student_local.dino]),
                                   released["student_dino"], **close)
        torch.testing.assert_close(out.teacher_global.dino, released["teacher_dino"], **close)
        torch.testing.assert_close(model.dino_loss.center, released["center_dino"], **close)
        for index, stage in enumerate(STAGES):
            torch.testing.assert_close(out.student_global.stages[index], released[f"student_{stage}_global"], **close)
            torch.testing.assert_close(out.student_local.stages[index], released[f"student_{stage}_local"], **close)
            torch.testing.assert_close(out.teacher_global.stages[index], released[f"teacher_{stage}_global"], **close)
            torch.testing.assert_close(out.targets[index], released[f"target_{stage}"], **close)
            torch.testing.assert_close(out.attention[index].squeeze(1), released[f"attention_{stage}"].flatten(0, 1),
                                       **close)
            torch.testing.assert_close(model.stage_losses[index].center, released[f"center_{stage}"], **close)
        if step == 0:
            parameters = dict(model.student.named_parameters())
            for name in META["gradients"]:
                torch.testing.assert_close(parameters[_ours(name)].grad, released[f"grad.{name}"], rtol=1e-5, atol=1e-4)
            assert not released["last_layer_has_grad"]
            assert not parameters["head.last_layer.weight_v"].grad.any()
        optimizer.step()
    # The release updates the teacher after each step, we before the next: its last update is made here.
    model.update_teacher(cosine_momentum(META["momentum"], META["steps"] - 1, META["steps"]))
    teacher = model.teacher.state_dict()
    final = {_ours(k.removeprefix("final.teacher.")): v for k, v in fixture.items() if k.startswith("final.teacher.")}
    assert final.keys() == {k for k in teacher if not k.endswith("num_batches_tracked")}
    for key, value in final.items():
        torch.testing.assert_close(teacher[key], value, rtol=1e-4, atol=5e-4, msg=key)


# -- presets and flags --------------------------------------------------------------------------------------


def test_presets_follow_the_release_and_the_views_are_dinos() -> None:
    paper = parse_pretrain_args(["--task", "scfs", "--preset", "paper"])
    assert paper.scfs == ScfsConfig() and ScfsTask.configure(paper) == paper
    assert (paper.scfs.out_dim, paper.scfs.momentum, paper.scfs.warmup_teacher_temperature_epochs) == (65536, 0.996, 50)
    crops = paper.crops
    assert (crops.num_global, crops.num_local, crops.global_size, crops.local_size) == (2, 8, 224, 96)
    assert (crops.global_scale, crops.local_scale) == ((0.25, 1.0), (0.05, 0.25))
    views = ScfsTask(paper).view_specs()
    assert [(v.size, v.scale, v.color_jitter, v.blur_probability, v.solarize_probability) for v in views] == [
        (224, (0.25, 1.0), (0.4, 0.4, 0.2, 0.1), 1.0, 0.0), (224, (0.25, 1.0), (0.4, 0.4, 0.2, 0.1), 0.1, 0.2),
        *[(96, (0.05, 0.25), (0.4, 0.4, 0.2, 0.1), 0.5, 0.0)] * 8]
    demo = parse_pretrain_args(["--task", "scfs"])
    assert (demo.crops.global_size, demo.crops.local_size, demo.crops.num_local) == (64, 32, 4)
    assert demo.scfs.out_dim <= 1024 and ScfsTask.configure(demo) == demo


@pytest.mark.parametrize(("flags", "message"), [
    (["--crops.num-global", "3"], "exactly two global crops"),
    (["--crops.num-local", "0"], "--crops.num-local >= 1"),
    (["--crops.num-local", "1", "--batch-size", "1"], "--batch-size x --crops.num-local >= 2"),
    (["--crops.color-strength", "0.5"], "fixed colour jitter"),
    (["--scfs.out-dim", "0"], "--scfs.out-dim must be positive"),
    (["--scfs.layer-bottleneck-dim", "0"], "--scfs.layer-bottleneck-dim must be positive"),
    (["--scfs.teacher-temperature", "0"], "must be positive"),
    (["--scfs.momentum", "1.5"], "--scfs.momentum and --scfs.center-momentum must lie in [0, 1]"),
    (["--scfs.search-weight", "-1"], "--scfs.search-weight must be >= 0"),
    (["--scfs.warmup-teacher-temperature-epochs", "-1"], "warmup-teacher-temperature-epochs"),
])
def test_configure_refuses_what_cannot_run(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ScfsTask.configure(parse_pretrain_args(["--task", "scfs", *flags]))
    assert message in str(info.value) and "\n" not in str(info.value)


# -- training runs -----------------------------------------------------------------------------------------


def test_pretraining_lowers_the_loss_and_exports_the_teachers_trunk(short_pretext_run: ShortRun) -> None:
    # 64 / 32 px crops (2 local), resnet18, narrow heads; no temperature warm-up (a warming teacher raises its
    # targets' entropy, and with it the loss) and a faster teacher: 30 steps show the fall.
    run = short_pretext_run("scfs")
    losses = scalar_histories(run.output_dir)
    assert len(losses["train/loss"]) == 30
    for tag in ("train/loss", "train/loss_c4_local", "train/loss_c5_global"):
        first, last = sum(losses[tag][:5]) / 5, sum(losses[tag][-5:]) / 5
        assert last < 0.92 * first, (tag, first, last)
    trunk = load_exported_trunk(run.output_dir / "pretrained.pth", run.output_dir / SWAV_LAYOUT_FILE)
    state = load_training_checkpoint(run.output_dir / "checkpoint.pth")["model"]
    for key, value in trunk.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, state[f"teacher.trunk.{key}"], msg=key)
    assert not torch.equal(state["teacher.trunk.conv1.weight"], state["student.trunk.conv1.weight"])
    layout = torch.load(run.output_dir / SWAV_LAYOUT_FILE, weights_only=True)
    assert {"module.head.last_layer.weight_v", "module.stage_heads.2.mlp.4.running_var"} <= layout.keys()


def _frozen_norm(model: ScfsModel) -> ScfsModel:
    """BatchNorm on its running statistics: with batch statistics B and 2B images normalise differently
    (per-process BN, by design), which would hide what the centres' all-reduce does."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _two_process_views(step: int) -> Views:
    generator = torch.Generator().manual_seed(100 + step)
    return Views([torch.randn(4, 3, 64, 64, generator=generator) for _ in range(2)] +
                 [torch.randn(4, 3, 32, 32, generator=generator) for _ in range(3)])


def _half(views: Views, rank: int) -> Views:
    return Views([crop[2 * rank:2 * (rank + 1)] for crop in views.crops])


def _sharing_worker(rank: int, out: str) -> None:
    model, task = _frozen_norm(_tiny_model().train()), _task()
    terms = [task.compute_loss(model, _half(_two_process_views(step), rank)).terms for step in range(2)]
    centres = {k: v for k, v in model.state_dict().items() if k.endswith("center")}
    torch.save({"terms": terms, "centres": centres}, f"{out}/{rank}.pt")


@pytest.mark.slow
@FORKED_GLOO
@pytest.mark.timeout(120)
def test_two_processes_of_b_share_the_centres_of_one_process_of_2b(tmp_path: Path) -> None:
    """2 x 2 images against 1 x 4: every loss term (averaged over processes) and every centre are the same,
    also at step 2, whose losses use the centres both processes updated."""
    run_in_two_processes(_sharing_worker, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    single, task = _frozen_norm(_tiny_model().train()), _task()
    for step in range(2):
        whole = task.compute_loss(single, _two_process_views(step)).terms
        for term, value in whole.items():
            torch.testing.assert_close(sum(rank["terms"][step][term] for rank in ranks) / 2, value, msg=term)
    centres = {k: v for k, v in single.state_dict().items() if k.endswith("center")}
    assert len(centres) == 4 and all(value.abs().sum() > 0 for value in centres.values())
    for result in ranks:
        for key, value in centres.items():
            torch.testing.assert_close(result["centres"][key], value, msg=key)


@pytest.mark.slow
@FORKED_GLOO
def test_two_process_pretraining_script_runs_under_ddp(tmp_path: Path) -> None:
    out = tmp_path / "pre"
    stdout = run_main_in_two_processes(pretrain_main, ["--cpu", "--task", "scfs", "--max-steps", "2", "--batch-size",
                                                       "2", "--crops.num-local", "2", "--output-dir", str(out)],
                                       tmp_path)
    assert "(2 processes)" in stdout
    state = load_training_checkpoint(out / "checkpoint.pth")["model"]
    assert int(state["batches_seen"]) == 2 and state["dino_loss.center"].abs().sum() > 0
    load_exported_trunk(out / "pretrained.pth", out / SWAV_LAYOUT_FILE)
