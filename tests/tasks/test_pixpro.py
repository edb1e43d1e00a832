"""PixPro: the positive mask and the PPM against their definitions, the momentum schedule, the presets, a
short pretraining run whose export loads as a backbone, and the released code's numbers
(tests/fixtures/pixpro_released/, made by its make_fixture.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import functional as TF

from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.datasets.multicrop import ViewGeometry, Views
from detr_ssl.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from detr_ssl.errors import ConfigError
from detr_ssl.tasks import backbone_pretext
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE
from detr_ssl.tasks.pixpro import PixelPropagation, PixProConfig, PixProModel, PixProTask, positive_pairs
from pretext_runs import ShortRun
from runs import load_exported_trunk, scalar_histories

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pixpro_released" / "fixture.pt"
TINY = PixProConfig(feature_dim=8, hidden_dim=32)


class TinyTrunk(nn.Sequential):
    """The fixture's encoder (conv 4x4 stride 4 -> BN -> ReLU: a 6x6 grid at 24 px) with a trunk's API."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 16, 4, stride=4), nn.BatchNorm2d(16), nn.ReLU())

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)


def _task(options: PixProConfig = TINY) -> PixProTask:
    return PixProTask(replace(PixProTask.preset_config("demo"), pixpro=options))


def _geometry(boxes: list[list[float]], flipped: list[bool], size: int) -> ViewGeometry:
    sizes = torch.tensor([[size, size]] * len(boxes))
    return ViewGeometry(torch.tensor(boxes, dtype=torch.float32), torch.tensor(flipped), sizes)


def test_the_loss_uses_the_positive_pairs_of_the_two_crops_flip_included() -> None:
    # Image 101 x 101: the release divides by 100. View 1 = columns/rows 0..60 -> [0, 0.6]; 2x2 cells 0.3 wide,
    # centres x, y in {0.15, 0.45}. View 2 = columns 30..90 -> x in [0.3, 0.9], rows 0..60. Flipped (image 0)
    # its column centres are 0.75, 0.45; not flipped (image 1) 0.45, 0.75. The radius is 0.7 * 0.3 * sqrt(2)
    # = 0.297, so only cells at the same place (0 apart) are positive, the next ones (0.3 apart) are not:
    # view-1 cells 1 and 3 (right column) pair with view-2 cells 1 and 3 when flipped, 0 and 2 when not.
    view_1 = _geometry([[0, 0, 61, 61]] * 2, [False, False], 101)
    view_2 = _geometry([[30, 0, 91, 61]] * 2, [True, False], 101)
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[0, 1, 1] = expected[0, 3, 3] = expected[1, 1, 0] = expected[1, 3, 2] = True
    assert torch.equal(positive_pairs(view_1, view_2, (2, 2), 0.7), expected)

    torch.manual_seed(0)
    model = PixProModel(TinyTrunk(), TINY).eval()  # eval: no momentum update, fixed statistics
    views = Views([torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)], [view_1, view_2])  # 2x2 cells
    loss = _task().compute_loss(model, views)
    with torch.no_grad():
        out = model(*views.crops)
    pairs = {0: [(1, 1), (3, 3)], 1: [(1, 0), (3, 2)]}  # (view-1 cell, view-2 cell) per image

    def by_hand(prediction: torch.Tensor, target: torch.Tensor, swap: bool) -> torch.Tensor:
        """-2 x the batch mean of each image's mean cosine over its pairs (the maps are unit vectors)."""
        per_image = []
        for b, cells in pairs.items():
            cosines = [prediction[b].flatten(1)[:, p] @ target[b].flatten(1)[:, t]
                       for p, t in ((j, i) if swap else (i, j) for i, j in cells)]
            per_image.append(torch.stack(cosines).mean())
        return -2 * torch.stack(per_image).mean()

    torch.testing.assert_close(loss.terms["loss_view1"], by_hand(out.prediction_1, out.target_2, False))
    torch.testing.assert_close(loss.terms["loss_view2"], by_hand(out.prediction_2, out.target_1, True))


@pytest.mark.parametrize("power,clamp_value", [(2.0, 0.0), (3.0, -0.5)])
def test_ppm_equals_its_formula(power: float, clamp_value: float) -> None:
    torch.manual_seed(0)
    ppm = PixelPropagation(replace(TINY, feature_dim=5, power=power, clamp_value=clamp_value))
    x = torch.randn(2, 5, 3, 2)
    y = ppm(x)
    values = ppm.transform(x)
    for b in range(2):
        cells = x[b].flatten(1).T  # (6, 5)
        g = F.normalize(values[b].flatten(1).T, dim=1)
        for i in range(6):
            weights = [max(float(F.cosine_similarity(cells[i], cells[j], dim=0)), clamp_value) ** power
                       for j in range(6)]
            expected = sum(w * g[j] for j, w in enumerate(weights))
            torch.testing.assert_close(y[b].flatten(1)[:, i], expected / expected.norm(), rtol=1e-5, atol=1e-6)


def test_training_moves_the_online_side_only_and_the_target_by_the_schedule() -> None:
    torch.manual_seed(0)
    model = PixProModel(TinyTrunk(), TINY).train()
    task = _task(replace(TINY, momentum_steps=2))
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.add_(0.1)
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    geometry = _geometry([[0, 0, 50, 50]] * 4, [False] * 4, 60)
    views = Views([torch.randn(4, 3, 24, 24), torch.randn(4, 3, 24, 24)], [geometry, geometry])
    task.compute_loss(model, views).total.backward()
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    for module in (model.encoder.trunk, model.encoder.projector, model.propagation):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    for old, new, online in zip(before, model.momentum_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * online)  # update 0 of K = 2: the base momentum
    for _ in range(2):  # update 1: momentum 0.995; update 2 (= K) and later: momentum 1, the target stays
        task.compute_loss(model, views)
    frozen = [p.clone() for p in model.momentum_encoder.parameters()]
    task.compute_loss(model, views)
    assert int(model.momentum_updates) == 4
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.momentum_encoder.parameters()))


def test_the_target_keeps_its_own_batchnorm_statistics() -> None:
    model = PixProModel(TinyTrunk(), TINY)
    online, target = model.encoder.trunk[1], model.momentum_encoder.trunk[1]
    online.running_mean.fill_(5.0)
    online.running_var.fill_(3.0)
    model.update_target(0.5, 10)
    assert torch.equal(target.running_mean, torch.zeros(16)) and torch.equal(target.running_var, torch.ones(16))


def test_schedule_length_is_the_batches_each_process_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    base = PixProTask.preset_config("demo")  # batch 16, 60 epochs
    task = PixProTask(base)
    task.build_dataset([None] * 33)
    assert task.schedule_length(task.options.momentum_steps) == 60 * 3
    monkeypatch.setattr(backbone_pretext, "world_size", lambda: 2)
    task = PixProTask(base)
    task.build_dataset([None] * 33)
    assert task.schedule_length(task.options.momentum_steps) == 60 * 2  # 33 images over 2 x 16 per step: 2 batches per epoch
    stopped = PixProTask(replace(base, run=replace(base.run, max_steps=50),
                                 optim=replace(base.optim, grad_accum_steps=2)))
    stopped.build_dataset([None] * 33)
    assert stopped.schedule_length(stopped.options.momentum_steps) == 50 * 2  # --max-steps optimizer steps of 2 batches each end the run first
    fixed = PixProTask(replace(base, pixpro=replace(base.pixpro, momentum_steps=7)))
    fixed.build_dataset([None] * 33)
    assert fixed.schedule_length(fixed.options.momentum_steps) == 7
    with pytest.raises(RuntimeError, match="momentum-steps"):
        PixProTask(base).compute_loss(PixProModel(TinyTrunk(), TINY).train(), Views([torch.randn(2, 3, 24, 24)] * 2))


def test_presets_views_and_rejected_flags() -> None:
    demo = parse_pretrain_args(["--task", "pixpro"])
    assert (demo.crops.global_size, demo.crops.global_scale, demo.crops.num_local) == (64, (0.08, 1.0), 0)
    assert (demo.pixpro.feature_dim, demo.pixpro.hidden_dim) == (64, 256) and PixProTask.configure(demo) == demo
    assert (demo.optim.batch_size, demo.optim.epochs, demo.optim.lr_drop) == (16, 60, 48)
    paper = parse_pretrain_args(["--task", "pixpro", "--preset", "paper"])
    assert (paper.crops.global_size, paper.crops.global_scale) == (224, (0.08, 1.0)) and paper.pixpro == PixProConfig()
    first, second = PixProTask(paper).view_specs()
    assert first.color_jitter == second.color_jitter == (0.4, 0.4, 0.2, 0.1)
    assert (first.blur_probability, first.solarize_probability) == (1.0, 0.0)
    assert (second.blur_probability, second.solarize_probability) == (0.1, 0.2)
    assert first.size == 224 and first.scale == (0.08, 1.0)
    for flags, message in ((["--crops.num-local", "2"], "exactly two global views"),
                           (["--pixpro.transform-layers", "3"], "transform-layers"),
                           (["--pixpro.power", "0.5", "--pixpro.clamp-value", "-0.1"], "power"),
                           (["--crops.color-strength", "0.5"], "color-strength")):
        with pytest.raises(ConfigError, match=message):
            PixProTask.configure(parse_pretrain_args(["--task", "pixpro", *flags]))


def test_pretraining_lowers_the_loss_and_exports_a_backbone(short_pretext_run: ShortRun) -> None:
    run = short_pretext_run("pixpro")  # 64 px views, resnet18
    exported, out = run.exported, run.output_dir
    losses = scalar_histories(out)["train/loss"]
    assert len(losses) == 16
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5, (first, last)  # the loss lies in [-4, 4]

    layout = torch.load(out / SWAV_LAYOUT_FILE, weights_only=True)
    assert {"module.projector.0.weight", "module.propagation.transform.weight"} <= layout.keys()
    load_exported_trunk(exported, out / SWAV_LAYOUT_FILE)


# -- the released code's numbers (tests/fixtures/pixpro_released) ------------------------------------------

RELEASED_HEADS = {"encoder": "encoder.trunk", "projector": "encoder.projector", "encoder_k": "momentum_encoder.trunk",
                  "projector_k": "momentum_encoder.projector", "value_transform": "propagation.transform"}
RELEASED_LAYERS = {"linear1": "0", "bn1": "1", "linear2": "3"}  # the release's MLP2d -> our mlp()


def _ours(released_key: str) -> str:
    head, _, rest = released_key.partition(".")
    return ".".join([RELEASED_HEADS[head], *(RELEASED_LAYERS.get(part, part) for part in rest.split("."))])


@pytest.fixture(scope="module")
def released() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _released_views(released: dict) -> Views:
    def view(name: str) -> tuple[torch.Tensor, ViewGeometry]:
        data = released[name]
        pixels = TF.normalize(data["pixels"].float().div(255), IMAGENET_MEAN, IMAGENET_STD)
        return pixels, ViewGeometry(data["boxes"], data["flipped"], released["image_sizes"])

    (crops_1, geometry_1), (crops_2, geometry_2) = view("view_1"), view("view_2")
    return Views([crops_1, crops_2], [geometry_1, geometry_2])


def test_positive_pairs_equal_the_released_masks(released: dict) -> None:
    geometry = _released_views(released).geometry
    mask = positive_pairs(geometry[0], geometry[1], (6, 6), 0.7)
    assert torch.equal(mask, released["mask_12"]) and torch.equal(mask.transpose(1, 2), released["mask_21"])
    assert released["mask_12"].sum(dim=(1, 2)).tolist()[-1] == 0  # one pair shares no cell


@pytest.mark.parametrize("case,power,clamp_value", [("p2", 2.0, 0.0), ("p05", 0.5, 0.0), ("p2_clamp", 2.0, -0.3)])
def test_ppm_equals_the_released_featprop(released: dict, case: str, power: float, clamp_value: float) -> None:
    data = released["propagation"]
    ppm = PixelPropagation(replace(TINY, power=power, clamp_value=clamp_value))
    ppm.transform.load_state_dict(data["transform"])
    with torch.no_grad():
        ours = ppm(data["features"])
    torch.testing.assert_close(ours, F.normalize(data[case], dim=1), rtol=0, atol=1e-6)  # forward() normalises


def test_two_training_steps_equal_the_released_forward(released: dict) -> None:
    training = released["training"]
    model = PixProModel(TinyTrunk(), TINY).train()
    state = {_ours(key): value for key, value in training["initial"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("momentum_encoder.") or k == "momentum_updates" for k in missing)
    model.momentum_encoder.load_state_dict(model.encoder.state_dict())
    task = _task(replace(TINY, momentum_steps=int(training["total_steps"])))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=float(training["lr"]))
    views, losses = _released_views(released), []
    for _ in range(2):
        loss = task.compute_loss(model, views).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    torch.testing.assert_close(torch.stack(losses), training["losses"], rtol=0, atol=1e-6)
    ours = model.state_dict()
    for key, value in training["final"].items():  # online and target weights, BatchNorm statistics of both
        torch.testing.assert_close(ours[_ours(key)], value, rtol=0, atol=1e-6, msg=key)
