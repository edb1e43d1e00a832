"""MCL: the montages and their cell-block bookkeeping, the scale -> pyramid level mapping, the presets and
refused flags, two processes sharing the gathered targets, a pretraining run whose export (trunk and
``input_proj``) loads, and the released code's numbers (tests/fixtures/mcl_released/, made by its
make_fixture.py)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from launch import FORKED_GLOO, run_in_two_processes, run_main_in_two_processes

from detr_ssl.blocks.montage import (
    build_montages,
    draw_montage_labels,
    montage_position,
    scale_levels,
    tile,
    untile,
)
from detr_ssl.blocks.pyramid import pyramid_strides
from detr_ssl.cli.pretrain import main as pretrain_main, parse_pretrain_args
from detr_ssl.datasets.multicrop import Views
from detr_ssl.errors import ConfigError
from detr_ssl.tasks import mcl as mcl_module
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, RunBatches
from detr_ssl.tasks.mcl import CellBlockHead, MclConfig, MclModel, MclTask, montage_info_nce
from pretext_runs import ShortRun
from runs import finetune_initialised_parts, load_exported_trunk, scalar_histories

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mcl_released"
META = json.loads((FIXTURE / "meta.json").read_text())
TINY = MclConfig(head_hidden_dim=32, feature_dim=8, predictor_hidden_dim=32)
"""The fixture's head widths (released structure: 4 convs, projector and predictors with BatchNorm)."""


def _tiny_model(options: MclConfig = TINY, num_levels: int = 3, seed: int = 0) -> MclModel:
    """The fixture's tiny ResNet (C3-C5: 8, 8, 16 channels) with an 8-wide pyramid and MCL's heads."""
    torch.manual_seed(seed)
    trunk = ResNet(BasicBlock, num_classes=0, **META["trunk"])
    return MclModel(trunk, options, META["pyramid"]["hidden_dim"], num_levels)


def _task(options: MclConfig = TINY, batch_size: int = 16) -> MclTask:
    base = MclTask.preset_config("demo")
    return MclTask(replace(base, mcl=options, optim=replace(base.optim, batch_size=batch_size)))


# -- montages and cell blocks ------------------------------------------------------------------------------

@pytest.mark.parametrize(("batch", "ratio"), [(5, 2), (8, 2), (16, 4), (6, 4), (3, 8)])
def test_each_sub_image_sits_where_its_label_says(batch: int, ratio: int) -> None:
    torch.manual_seed(batch * ratio)
    images = torch.randn(batch, 3, 32, 32)
    labels = draw_montage_labels(batch, ratio)
    slots = math.ceil(batch / ratio**2) * ratio**2
    assert len(labels) == slots
    counts = torch.bincount(labels, minlength=batch)
    assert counts.min() >= slots // batch and counts.max() <= math.ceil(slots / batch)  # every image, evenly
    montages = build_montages(images, labels, ratio)
    side = 32 // ratio
    assert montages.shape == (slots // ratio**2, 3, 32, 32)
    for index, label in enumerate(labels.tolist()):
        montage, row, column = montage_position(index, ratio)
        block = montages[montage, :, row * side:(row + 1) * side, column * side:(column + 1) * side]
        assert torch.equal(block, images[label, :, ::ratio, ::ratio])  # nearest: pixel (r i, r j)


def test_cell_blocks_round_trip_to_the_sub_images_and_their_features() -> None:
    torch.manual_seed(0)
    maps = torch.randn(3, 5, 12, 8)
    for ratio in (1, 2, 4):
        assert torch.equal(tile(untile(maps, ratio), ratio), maps)
    with pytest.raises(ValueError, match="3x3 equal blocks"):
        untile(maps, 3)
    # A stride-s "feature map" (s x s average pooling) of a montage, cut into cell blocks, is the feature map
    # of each downsampled sub-image on its own: the blocks are the sub-images' cells.
    images, ratio, stride = torch.randn(8, 3, 32, 32), 2, 4
    labels = draw_montage_labels(8, ratio)
    blocks = untile(F.avg_pool2d(build_montages(images, labels, ratio), stride), ratio)
    torch.testing.assert_close(blocks, F.avg_pool2d(images[labels][:, :, ::ratio, ::ratio], stride))


def test_the_head_embeds_each_sub_image_as_if_it_were_alone() -> None:
    """The released neck runs its convs on every cell block separately (zero padding at the block's border),
    so a sub-image's embedding is the head's output for its own cell block (eval: no batch statistics)."""
    torch.manual_seed(0)
    head = CellBlockHead(6, replace(TINY, head_convs=2)).eval()
    for module in head.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.normal_()
    ratio, cells = 4, 3
    maps = torch.randn(2, 6, ratio * cells, ratio * cells)
    with torch.no_grad():
        together = head(maps, ratio)
        alone = [head(maps[m:m + 1, :, r * cells:(r + 1) * cells, c * cells:(c + 1) * cells], 1)
                 for m, r, c in (montage_position(j, ratio) for j in range(2 * ratio**2))]
    torch.testing.assert_close(together, torch.cat(alone))


def test_scale_r_reads_the_level_of_stride_32_over_r() -> None:
    weights = (0.5, 0.25, 0.125)
    assert pyramid_strides(3) == (8, 16, 32) and pyramid_strides(4) == (8, 16, 32, 64)
    for levels in (3, 4):  # the demo's and ResNet-50's detector: the same levels, the stride-64 one unused
        scales = scale_levels((1, 2, 4), weights, pyramid_strides(levels))
        assert [(s.ratio, s.level, s.weight) for s in scales] == [(1, 2, 0.5), (2, 1, 0.25), (4, 0, 0.125)]
    assert [s.level for s in scale_levels((1, 2), (1, 1), pyramid_strides(2))] == [1, 0]  # strides 16, 32
    for ratios, strides in (((1, 2, 4, 8), (8, 16, 32)), ((1, 4), (16, 32)), ((1, 3), (8, 16, 32))):
        with pytest.raises(ValueError, match=f"scale {ratios[-1]} reads stride 32/{ratios[-1]}"):
            scale_levels(ratios, (1,) * len(ratios), strides)
    model = _tiny_model(num_levels=4)
    views = torch.randn(2, 3, 64, 64)
    levels = model.encoder(torch.cat([views, build_montages(views, torch.tensor([0, 1, 1, 0]), 2)]))
    for scale in model.scales:  # every scale's sub-images get the 64 / 32 = 2 x 2 cells of the full view
        assert levels[scale.level].shape[-1] == 2 * scale.ratio
    config = parse_pretrain_args(["--task", "mcl", "--model.num-feature-levels", "4"])
    assert MclTask.find_unused_parameters(config)
    assert not MclTask.find_unused_parameters(parse_pretrain_args(["--task", "mcl"]))


# -- presets and flags -------------------------------------------------------------------------------------

def test_presets_follow_the_release_and_configure_refuses_what_cannot_run() -> None:
    demo = parse_pretrain_args(["--task", "mcl"])
    assert (demo.crops.global_size, demo.crops.global_scale, demo.crops.num_local) == (64, (0.2, 1.0), 0)
    assert (demo.mcl.feature_dim, demo.mcl.head_hidden_dim, demo.mcl.predictor_hidden_dim) == (64, 256, 256)
    assert (demo.optim.batch_size, demo.optim.epochs) == (16, 60) and MclTask.configure(demo) == demo
    paper = parse_pretrain_args(["--task", "mcl", "--preset", "paper"])
    assert paper.mcl == MclConfig() and MclTask.configure(paper) == paper
    assert (paper.mcl.scales, paper.mcl.scale_weights, paper.mcl.temperature) == ((1, 2, 4), (0.5, 0.25, 0.125), 1.0)
    specs = MclTask(paper).view_specs()  # a pair per scale: three first views, then three second ones
    assert [(s.blur_probability, s.solarize_probability) for s in specs] == [(1.0, 0.0)] * 3 + [(0.1, 0.2)] * 3
    assert all((s.size, s.scale, s.color_jitter) == (224, (0.2, 1.0), (0.4, 0.4, 0.2, 0.1)) for s in specs)
    shared = parse_pretrain_args(["--task", "mcl", "--mcl.no-separate-views", "--mcl.scales", "1", "2",
                                  "--mcl.scale-weights", "1", "1"])
    assert len(MclTask(MclTask.configure(shared)).view_specs()) == 2
    refused = {
        "scale 8 reads stride 32/8": ["--mcl.scales", "1", "2", "4", "8", "--mcl.scale-weights", "1", "1", "1", "1"],
        "num-feature-levels 2: scale 4": ["--model.num-feature-levels", "2"],
        "must start with 1": ["--mcl.scales", "2", "4", "--mcl.scale-weights", "1", "1"],
        "3 scales but 2 weights": ["--mcl.scale-weights", "1", "1"],
        "must not be negative": ["--mcl.scale-weights", "1", "-1", "1"],
        "multiple of 32": ["--crops.global-size", "80"],
        "--batch-size 1": ["--batch-size", "1"],
        "temperature must be positive": ["--mcl.temperature", "0"],
        "momentum must lie in": ["--mcl.momentum", "1.5"],
        "exactly two global views": ["--crops.num-local", "2"],
        "color-strength": ["--crops.color-strength", "0.5"],
    }
    for message, flags in refused.items():
        with pytest.raises(ConfigError, match=message):
            MclTask.configure(parse_pretrain_args(["--task", "mcl", *flags]))


# -- training ----------------------------------------------------------------------------------------------

def test_training_moves_the_online_side_only_and_the_target_by_the_schedule() -> None:
    model, task = _tiny_model().train(), _task(replace(TINY, momentum=0.5, momentum_steps=2))
    views = Views([torch.randn(16, 3, 64, 64) for _ in range(6)])
    task.compute_loss(model, views).total.backward()  # batch 0: no update yet (the release's comes after it)
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    for module in (model.encoder.trunk, model.encoder.pyramid, model.encoder.head, model.predictors):
        grads = [p.grad for p in module.parameters()]  # (timm zero-inits each block's last BN: some are 0)
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(torch.equal(a, b) for a, b in zip(model.momentum_encoder.parameters(), model.encoder.parameters()))
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.add_(0.1)
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    task.compute_loss(model, views)  # batch 1: the update after batch 0, momentum m_0 = 0.5
    for old, new, online in zip(before, model.momentum_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * online)
    task.compute_loss(model, views)  # batch 2: m_1 = 0.75; from batch 3 on m_2 = 1, the target stays
    frozen = [p.clone() for p in model.momentum_encoder.parameters()]
    task.compute_loss(model, views)
    assert int(model.batches_seen) == 4
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.momentum_encoder.parameters()))
    with pytest.raises(RuntimeError, match="momentum-steps"):  # no schedule length: no dataset, no flag
        _task().compute_loss(model, views)


def _frozen_norm(model: MclModel) -> MclModel:
    """BatchNorm on its running statistics: with batch statistics B and 2B images normalise differently
    (per-process BN, by design), which would hide what the gather does."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.eval()
    return model


def _in_order(batch_size: int, ratio: int, device: torch.device | None = None) -> torch.Tensor:
    """A montage draw without shuffling: 1 x 2B images lay out as 2 x B do, one process after the other."""
    return torch.arange(math.ceil(batch_size / ratio**2) * ratio**2, device=device) % batch_size


def _two_process_views() -> Views:
    generator = torch.Generator().manual_seed(7)
    return Views([torch.randn(32, 3, 32, 32, generator=generator) for _ in range(6)])


def _half(views: Views, rank: int) -> Views:
    return Views([crop[16 * rank:16 * (rank + 1)] for crop in views.crops])


def _grads(model: MclModel) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def _gather_worker(rank: int, out: str) -> None:
    model, task = _frozen_norm(_tiny_model().train()), _task()
    task.run_batches = RunBatches(per_epoch=10, total=10)
    loss = task.compute_loss(model, _half(_two_process_views(), rank))
    loss.total.backward()
    torch.save({"terms": loss.terms, "grads": _grads(model)}, f"{out}/{rank}.pt")


@FORKED_GLOO
@pytest.mark.timeout(120)
def test_two_processes_of_b_equal_one_process_of_2b(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 x 16 images against 1 x 32: every sub-image is classified among the targets of all 32 images (the
    gather, labels offset by the rank), so the per-scale losses averaged over the processes and the averaged
    gradients (what DDP applies) are those of one process."""
    monkeypatch.setattr(mcl_module, "draw_montage_labels", _in_order)
    run_in_two_processes(_gather_worker, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    model, task = _frozen_norm(_tiny_model().train()), _task(batch_size=32)
    task.run_batches = RunBatches(per_epoch=10, total=10)
    whole = task.compute_loss(model, _two_process_views())
    whole.total.backward()
    assert set(whole.terms) == {"loss_scale1", "loss_scale2", "loss_scale4"}
    for term, value in whole.terms.items():
        torch.testing.assert_close((ranks[0]["terms"][term] + ranks[1]["terms"][term]) / 2, value)
    grads = _grads(model)
    assert grads.keys() == ranks[0]["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close((ranks[0]["grads"][name] + ranks[1]["grads"][name]) / 2, grad,
                                   rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@FORKED_GLOO
def test_two_process_pretraining_script_runs_under_ddp_with_an_unread_level(tmp_path: Path) -> None:
    """ResNet-50's 4 levels on the tiny model: no scale reads the stride-64 one, whose parameters get no
    gradient; DDP must be told (``find_unused_parameters``) or its second step fails."""
    out = tmp_path / "pre"
    stdout = run_main_in_two_processes(pretrain_main, [
        "--cpu", "--task", "mcl", "--max-steps", "2", "--batch-size", "4", "--model.num-feature-levels", "4",
        "--output-dir", str(out)], tmp_path)
    assert "(2 processes)" in stdout
    state = torch.load(out / "pretrained.pth", weights_only=True)
    assert state["config"]["num_feature_levels"] == 4 and "input_proj.3.0.weight" in state["model"]


def test_pretraining_lowers_the_loss_and_exports_trunk_and_pyramid(short_pretext_run: ShortRun) -> None:
    # 64 px views, resnet18, the tiny detector's 3 levels. Large crops and T = 0.2: with the released T = 1
    # (logits within [-1, 1]) and crops of 20% to 100%, 8 photos' loss moves by about 1% in 30 steps (a fixed
    # batch's falls by a third: tested by hand).
    run = short_pretext_run("mcl")
    pretrained = run.exported
    losses = scalar_histories(run.output_dir)
    assert len(losses["train/loss"]) == 30
    first, last = ({tag: sum(values[window]) / 4 for tag, values in losses.items() if tag.startswith("train/loss")}
                   for window in (slice(0, 4), slice(-4, None)))
    assert last["train/loss"] < 0.95 * first["train/loss"], (first, last)
    assert last["train/loss_scale1"] < 0.9 * first["train/loss_scale1"], (first, last)  # the full views
    montages = ("train/loss_scale2", "train/loss_scale4")
    assert sum(last[tag] for tag in montages) < sum(first[tag] for tag in montages), (first, last)

    load_exported_trunk(pretrained, run.output_dir / SWAV_LAYOUT_FILE)
    state = torch.load(pretrained, weights_only=True)
    proj_keys = {k for k in state["model"] if k.startswith("input_proj.")}
    assert len(proj_keys) == 4 * 3 and state["config"]["num_feature_levels"] == 3  # conv and GroupNorm per level
    parts = finetune_initialised_parts(pretrained)
    assert parts["input_proj"] == len(proj_keys) and parts["backbone"] > 0


# -- the released code's numbers (tests/fixtures/mcl_released) ---------------------------------------------

RELEASED_PREFIXES = (("encoder_q.0.trunk.", "encoder.trunk."), ("encoder_q.1.", "encoder.pyramid."),
                     ("encoder_q.2.", "encoder.head."), ("encoder_k.0.trunk.", "momentum_encoder.trunk."),
                     ("encoder_k.1.", "momentum_encoder.pyramid."), ("encoder_k.2.", "momentum_encoder.head."),
                     ("head.predictor.", "predictors."))
RELEASED_LAYERS = ((r"cls_convs\.(\d+)\.conv\.", r"convs.\1.0."), (r"cls_convs\.(\d+)\.bn\.", r"convs.\1.1."),
                   (r"head\.mlp\.", "head.projector."), (r"predictors\.(\d+)\.mlp\.", r"predictors.\1."),
                   (r"^mlp\.", "projector."))
"""The release's ConvModule (conv, bn), neck ``mlp`` and predictor ``NonLinearNeckV2.mlp`` -> our names."""


def _ours(key: str) -> str:
    for released, ours in RELEASED_PREFIXES:
        if key.startswith(released):
            key = ours + key.removeprefix(released)
            break
    for pattern, replacement in RELEASED_LAYERS:
        key = re.sub(pattern, replacement, key)
    return key


def _unpack(packed: dict) -> dict[str, torch.Tensor]:
    """make_fixture.py's flat state -> a state dict in our names."""
    sizes = [math.prod(shape) for shape in packed["shapes"]]
    values = packed["values"].split(sizes)
    return {_ours(key): value.reshape(shape) for key, value, shape in zip(packed["keys"], values, packed["shapes"])}


@pytest.fixture(scope="module")
def released() -> dict:
    return torch.load(FIXTURE / "fixture.pt", weights_only=True)


def test_montages_equal_the_released_random_combine_img(released: dict) -> None:
    data = released["montage"]
    images = data["images"].float()
    for ratio, seed in zip(META["montage"]["ratios"], META["montage"]["seeds"]):
        torch.manual_seed(seed)
        labels = draw_montage_labels(len(images), ratio)
        assert torch.equal(labels, data[f"ratio{ratio}"]["labels"])
        assert torch.equal(build_montages(images, labels, ratio).half(), data[f"ratio{ratio}"]["montages"])


def test_head_equals_the_released_neck_on_batch_statistics(released: dict) -> None:
    data = released["neck"]
    head = CellBlockHead(META["neck"]["in_channels"], TINY).train()
    head.load_state_dict(_unpack(data["state"]))
    for level_map, expected in zip(data["maps"], data["outputs"]):
        ratio = level_map.shape[-1] // META["neck"]["avg_size"]
        torch.testing.assert_close(head(level_map, ratio), expected.flatten(0, 1), rtol=0, atol=1e-5)


def test_predictor_and_loss_equal_the_released_head(released: dict) -> None:
    data, options = released["head"], META["head"]
    predictor = MclModel(ResNet(BasicBlock, num_classes=0, **META["trunk"]), TINY, 8, 3).predictors[0]
    state = _unpack({**data["state"], "keys": [f"head.{k}" for k in data["state"]["keys"]]})
    predictor.load_state_dict({key.removeprefix(f"predictors.{options['head_idx']}."): value
                               for key, value in state.items() if key.startswith(f"predictors.{options['head_idx']}.")})
    prediction = F.normalize(predictor.train()(data["inputs"]), dim=1)
    loss = montage_info_nce(prediction, data["targets"], data["labels"], options["temperature"])
    torch.testing.assert_close(loss * options["loss_weight"], data["loss"], rtol=0, atol=1e-6)


@pytest.mark.usefixtures("one_thread")  # as the fixture was made: reduction order depends on the thread count
def test_two_training_steps_equal_the_released_forward_train(released: dict) -> None:
    data = released["training"]
    options = replace(TINY, momentum=META["base_momentum"], momentum_steps=META["momentum_steps"])
    model = _tiny_model(options).train()
    missing, unexpected = model.load_state_dict(_unpack(data["initial"]), strict=False)
    assert not unexpected and all(k.startswith("momentum_encoder.") or k.endswith(("num_batches_tracked", "seen"))
                                  for k in missing)
    model.momentum_encoder.load_state_dict(model.encoder.state_dict())
    model.encoder.head.eval()  # as the fixture's necks (see make_fixture.py)
    model.momentum_encoder.head.eval()
    task = _task(options, batch_size=META["batch"])
    low = data["images_lowres"].float()
    images = low.repeat_interleave(META["upsample"], -1).repeat_interleave(META["upsample"], -2)
    views = Views(list(images.unbind(1)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=META["learning_rate"])
    for step, seed in enumerate(META["step_seeds"]):
        torch.manual_seed(seed)
        _, labels, _ = task.montage_batches(views)
        for side, key in enumerate("qk"):
            assert all(torch.equal(a, b) for a, b in zip(labels[side], data["labels"][step][key], strict=True))
        torch.manual_seed(seed)
        loss = task.compute_loss(model, views)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        for level, scale in enumerate(model.scales):
            expected = data["steps"][step][f"loss_q_level_{level}"] + data["steps"][step][f"loss_k_level_{level}"]
            torch.testing.assert_close(scale.weight * loss.terms[f"loss_scale{scale.ratio}"], expected,
                                       rtol=0, atol=1e-5)
    model.update_target(options.momentum, options.momentum_steps)  # the release's update after the last step
    ours = model.state_dict()
    for key, value in _unpack(data["final"]).items():  # online, predictors, target; BatchNorm statistics too
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-5, msg=key)
