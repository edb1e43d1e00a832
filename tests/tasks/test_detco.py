"""DetCo: the jigsaw local view, the per-stage heads and queues and how the stage weights combine the three
contrasts, presets and refused flags, a pretraining run whose export loads, and two processes sharing the
queues. No golden fixture: DetCo's pretraining code was never released."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from launch import FORKED_GLOO, run_in_two_processes
from pretext_runs import ShortRun
from runs import load_exported_trunk, scalar_histories
from torch import nn

from detr_ssl.blocks.jigsaw import cut_patches, jigsaw, jigsaw_offsets
from detr_ssl.blocks.pyramid import trunk_stages
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.datasets.multicrop import Views
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.errors import ConfigError
from detr_ssl.losses.contrastive import info_nce
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, build_trunk
from detr_ssl.tasks.detco import STAGES, DetCoConfig, DetCoModel, DetCoTask

REPO = Path(__file__).resolve().parents[2]
TINY = DetCoConfig(feature_dim=8, hidden_dim=16, queue_length=6, patch_size=16)
"""48 px views: 16 px cells, so a 16 px patch is its cell (no jitter)."""


def _model(options: DetCoConfig = TINY, seed: int = 0) -> DetCoModel:
    torch.manual_seed(seed)
    return DetCoModel(build_trunk("resnet18"), options)


def _task(options: DetCoConfig = TINY) -> DetCoTask:
    base = DetCoTask.preset_config("demo")
    return DetCoTask(replace(base, crops=replace(base.crops, global_size=48), detco=options))


def _views(batch: int = 4, size: int = 48, seed: int = 1) -> Views:
    generator = torch.Generator().manual_seed(seed)
    return Views([torch.randn(batch, 3, size, size, generator=generator) for _ in range(2)])


def _reassembled(patches: torch.Tensor) -> torch.Tensor:
    """``(B, 9, C, p, p)`` row-major patches laid side by side: ``(B, C, 3p, 3p)``."""
    rows = [torch.cat(list(patches[:, 3 * r:3 * r + 3].unbind(1)), dim=-1) for r in range(3)]
    return torch.cat(rows, dim=-2)


def _captured_forward(model: DetCoModel) -> list:
    """The (args, output) of every call of ``model``, appended as they happen."""
    calls: list = []
    model.register_forward_hook(lambda module, args, out: calls.append((args, out)))
    return calls


# --- the jigsaw -----------------------------------------------------------------------------------------------

def test_patches_as_large_as_their_cells_tile_the_view_exactly() -> None:
    images = torch.randn(3, 3, 48, 48)
    for seed in range(3):  # no room to move: every draw gives the cells themselves
        torch.manual_seed(seed)
        patches, offsets = jigsaw(images, 3, 16)
        assert patches.shape == (3, 9, 3, 16, 16)
        assert offsets.tolist() == [[[r, c] for r in (0, 16, 32) for c in (0, 16, 32)]] * 3
        assert torch.equal(_reassembled(patches), images)


def test_jittered_patches_are_exact_crops_inside_their_cells() -> None:
    images = torch.randn(2, 3, 64, 64, requires_grad=True)  # cells 21, 21, 22 px
    starts = torch.tensor([0, 21, 42])
    lengths = torch.tensor([21, 21, 22])
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        patches, offsets = jigsaw(images, 3, 16)
        for b in range(2):
            for cell in range(9):
                y, x = offsets[b, cell].tolist()
                assert torch.equal(patches[b, cell], images[b, :, y:y + 16, x:x + 16])
                for value, index in ((y, cell // 3), (x, cell % 3)):
                    low = int(starts[index])
                    assert low <= value <= low + int(lengths[index]) - 16
                    seen.add((index, value - low))
    # Every position a patch fits at is drawn: 0..5 in a 21 px cell, 0..6 in the 22 px one.
    assert seen == {(i, s) for i in range(3) for s in range(int(lengths[i]) - 15)}
    patches.sum().backward()  # the patches are views of the pixels: gradient reaches the image
    assert images.grad is not None and images.grad.sum() > 0


def test_cut_patches_takes_the_given_offsets_and_a_too_large_patch_is_refused() -> None:
    images = torch.arange(2 * 30 * 30, dtype=torch.float32).view(2, 1, 30, 30)
    offsets = torch.tensor([[[3, 4]], [[10, 0]]])
    patches = cut_patches(images, offsets, 5)
    assert torch.equal(patches[0, 0], images[0, :, 3:8, 4:9]) and torch.equal(patches[1, 0], images[1, :, 10:15, 0:5])
    with pytest.raises(ValueError, match="1 to 10 px"):
        jigsaw_offsets(2, (30, 30), 3, 11)


def test_the_local_view_is_the_jigsaw_of_each_encoders_own_view() -> None:
    """What compute_loss hands the model: view 0 and its patches (query), view 1 and its patches (key)."""
    model = _model().train()
    calls = _captured_forward(model)
    views = _views()
    _task().compute_loss(model, views)
    (query_images, query_patches, key_images, key_patches), _ = calls[0]
    assert torch.equal(query_images, views.crops[0]) and torch.equal(key_images, views.crops[1])
    assert torch.equal(_reassembled(query_patches), views.crops[0])
    assert torch.equal(_reassembled(key_patches), views.crops[1])


# --- heads, queues, loss --------------------------------------------------------------------------------------

def test_each_stage_has_its_own_heads_and_the_local_head_reads_the_nine_patches_in_cell_order() -> None:
    model = _model().eval()  # running BN statistics: a patch encoded alone = encoded in the batch
    heads = model.encoder
    assert len(heads.global_heads) == len(heads.local_heads) == len(STAGES) == 4
    assert [head[0].in_features for head in heads.global_heads] == [64, 128, 256, 512]
    assert [head[0].in_features for head in heads.local_heads] == [9 * 64, 9 * 128, 9 * 256, 9 * 512]
    images = torch.randn(2, 3, 48, 48)
    patches, _ = jigsaw(images, 3, 12)
    with torch.no_grad():
        out = heads(images, patches)
        for s in range(4):
            whole = trunk_stages(heads.trunk, images)[s].mean(dim=(2, 3))
            torch.testing.assert_close(out.global_[s], F.normalize(heads.global_heads[s](whole), dim=1))
            one_by_one = [trunk_stages(heads.trunk, patches[:, k])[s].mean(dim=(2, 3)) for k in range(9)]
            local = heads.local_heads[s](torch.cat(one_by_one, dim=1))
            torch.testing.assert_close(out.local[s], F.normalize(local, dim=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weights", [(0.1, 0.4, 0.7, 1.0), (0.0, 0.0, 0.0, 1.0), (2.0, 0.0, 0.5, 0.0)])
def test_stage_weights_combine_the_three_contrasts_of_every_stage(weights: tuple[float, ...]) -> None:
    options = replace(TINY, stage_weights=weights)
    model = _model(options).train()
    global_before = [queue.keys.clone() for queue in model.global_queues]
    local_before = [queue.keys.clone() for queue in model.local_queues]
    calls = _captured_forward(model)
    loss = _task(options).compute_loss(model, _views())
    _, (query, key) = calls[0]
    expected, per_stage = 0.0, []
    for s in range(4):
        gg = info_nce(query.global_[s], key.global_[s], global_before[s], TINY.temperature)
        ll = info_nce(query.local[s], key.local[s], local_before[s], TINY.temperature)
        gl = info_nce(query.local[s], key.global_[s], global_before[s], TINY.temperature)
        per_stage.append(weights[s] * (gg + ll + gl))
        expected = expected + per_stage[-1]
    torch.testing.assert_close(loss.total, expected)
    for name, value in zip(STAGES, per_stage, strict=True):
        torch.testing.assert_close(loss.terms[f"loss_{name}"], value.detach())
    contrasts = loss.terms["loss_global"] + loss.terms["loss_local"] + loss.terms["loss_cross"]
    torch.testing.assert_close(contrasts, loss.total.detach())


def test_loss_trains_the_query_encoder_and_enqueues_each_stages_keys() -> None:
    model = _model().train()
    calls = _captured_forward(model)
    loss = _task().compute_loss(model, _views())
    loss.total.backward()
    assert all(param.grad is None for param in model.momentum_encoder.parameters())
    assert all(param.grad is not None for param in model.encoder.parameters())
    (_, _, key_images, key_patches), (_, key) = calls[0]
    with torch.no_grad():  # the key encoder is deterministic in train mode: same inputs, same keys
        again = model.momentum_encoder(key_images, key_patches)
    torch.testing.assert_close(again.global_, key.global_)
    for s in range(4):
        assert int(model.global_queues[s].pointer) == int(model.local_queues[s].pointer) == 4
        torch.testing.assert_close(model.global_queues[s].keys[:4], key.global_[s])
        torch.testing.assert_close(model.local_queues[s].keys[:4], key.local[s])
    state = model.state_dict()
    assert {f"{kind}_queues.{s}.{buffer}" for kind in ("global", "local") for s in range(4)
            for buffer in ("keys", "pointer")} <= state.keys()


# --- presets and flags ----------------------------------------------------------------------------------------

def test_presets_follow_moco_v2_and_the_paper() -> None:
    paper = parse_pretrain_args(["--task", "detco", "--preset", "paper"])
    assert paper.detco == DetCoConfig() and DetCoTask.configure(paper) == paper
    assert (paper.detco.queue_length, paper.detco.momentum, paper.detco.temperature) == (65536, 0.999, 0.2)
    assert paper.detco.stage_weights == (0.1, 0.4, 0.7, 1.0)
    assert (paper.crops.num_global, paper.crops.num_local, paper.crops.global_size) == (2, 0, 224)
    assert (paper.crops.global_scale, paper.crops.color_strength) == ((0.2, 1.0), 0.5)
    demo = parse_pretrain_args(["--task", "detco"])
    assert (demo.crops.global_size, demo.detco.patch_size, demo.detco.queue_length) == (64, 16, 32)
    assert DetCoTask.configure(demo) == demo
    flagged = parse_pretrain_args(["--task", "detco", "--detco.stage-weights", "1", "1", "1", "1",
                                   "--detco.patch-size", "21"])
    assert DetCoTask.configure(flagged).detco.stage_weights == (1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--crops.num-local", "2"], "exactly two global views"),
    (["--detco.queue-length", "0"], "--detco.queue-length must be positive"),
    (["--detco.temperature", "0"], "--detco.temperature must be positive"),
    (["--detco.momentum", "1.5"], "--detco.momentum in \\[0, 1\\]"),
    (["--detco.stage-weights", "0", "0", "0", "0"], "--detco.stage-weights must be non-negative and not all zero"),
    (["--detco.stage-weights", "-1", "1", "1", "1"], "--detco.stage-weights must be non-negative"),
    (["--detco.patch-size", "22"], "--detco.patch-size must be 1 to 21 .*--crops.global-size 64"),
    (["--detco.patch-size", "0"], "--detco.patch-size must be 1 to 21"),
    (["--crops.global-size", "32"], "--detco.patch-size must be 1 to 10 .*--crops.global-size 32"),
])
def test_bad_flags_are_refused_in_one_line(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        DetCoTask.configure(parse_pretrain_args(["--task", "detco", *flags]))
    assert "\n" not in str(info.value)


# --- training runs --------------------------------------------------------------------------------------------

def test_pretraining_lowers_the_loss_and_exports_the_trunk(short_pretext_run: ShortRun) -> None:
    # 64 px views, 16 px patches, resnet18. Mild views (large crops, no colour jitter): with MoCo v2's, MoCo
    # terms on 8 photos stay near chance for the first hundred steps (as RegionCL's instance term does). A
    # queue of one batch holds only real keys after the first step.
    run = short_pretext_run("detco")
    exported, out = run.exported, run.output_dir

    losses = scalar_histories(out)
    assert len(losses["train/loss"]) == 30
    # Step 1 scores against the random initial queues (unusually easy negatives), so it is left out.
    for tag in ("train/loss", "train/loss_global", "train/loss_local", "train/loss_cross", "train/loss_c5"):
        first, last = sum(losses[tag][1:6]) / 5, sum(losses[tag][-5:]) / 5
        assert last < 0.85 * first, (tag, first, last)

    state = load_training_checkpoint(out / "checkpoint.pth")["model"]
    assert all(int(state[f"{kind}_queues.{s}.pointer"]) == 0 for kind in ("global", "local") for s in range(4))
    load_exported_trunk(exported, out / SWAV_LAYOUT_FILE)
    assert not any(key.startswith("input_proj.") for key in torch.load(exported, weights_only=True)["model"])
    # The layout file carries the C5 global head (MoCo v2's), none of the other seven.
    layout = torch.load(out / SWAV_LAYOUT_FILE, weights_only=True)
    heads = {key for key in layout if not key.startswith(("module.conv1", "module.bn1", "module.layer"))}
    assert heads == {f"module.projection_head.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def _frozen_norm(model: DetCoModel) -> DetCoModel:
    """BatchNorm on its running statistics: with batch statistics B and 2B images normalise differently
    (per-process BN, by design), which would hide what the queues do."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


SHARED = replace(TINY, queue_length=24)
"""A queue longer than the two steps' 16 keys: what each process pushed stays in it, in rank order."""


def _half(views: Views, rank: int) -> Views:
    return Views([crop[4 * rank:4 * (rank + 1)] for crop in views.crops])


def _sharing_worker(rank: int, out: str) -> None:
    model, task, terms = _frozen_norm(_model(SHARED).train()), _task(SHARED), []
    for step in range(2):
        terms.append(task.compute_loss(model, _half(_views(8, seed=100 + step), rank)).terms)
    queues = {f"{kind}{s}": getattr(model, f"{kind}_queues")[s].state_dict()
              for kind in ("global", "local") for s in range(4)}
    torch.save({"terms": terms, "queues": queues}, f"{out}/{rank}.pt")


@FORKED_GLOO
@pytest.mark.timeout(120)
def test_two_processes_of_b_equal_one_process_of_2b(tmp_path: Path) -> None:
    """2 x 4 images against 1 x 8, two steps: every term (a mean over queries against the same queues) is
    the mean of the two processes', and every queue holds the same keys. Patches are their cells (no jitter),
    so both runs see the same pixels; step 2 scores against the keys both processes pushed."""
    run_in_two_processes(_sharing_worker, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    single, task = _frozen_norm(_model(SHARED).train()), _task(SHARED)
    for step in range(2):
        whole = task.compute_loss(single, _views(8, seed=100 + step)).terms
        assert set(whole) == {"loss_global", "loss_local", "loss_cross", "loss_c2", "loss_c3", "loss_c4", "loss_c5"}
        for name, value in whole.items():
            torch.testing.assert_close(sum(rank["terms"][step][name] for rank in ranks) / 2, value)
    for kind in ("global", "local"):
        for s in range(4):
            queue = getattr(single, f"{kind}_queues")[s]
            assert int(queue.pointer) == 16
            for result in ranks:
                torch.testing.assert_close(result["queues"][f"{kind}{s}"]["keys"], queue.keys)
                assert int(result["queues"][f"{kind}{s}"]["pointer"]) == int(queue.pointer)
