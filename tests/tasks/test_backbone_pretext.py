"""Every backbone pretext (SwAV, DenseCL) trains the ResNet on unlabeled photos and exports it in the
layouts the rest of the library reads: detector backbone, DetReg teacher, backbone init."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from pretext_runs import PretextRun, ShortRun

from detr_ssl.cli.pretrain import parse_pretrain_args, pretrain
from detr_ssl.config import with_backbone_init
from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.teachers import build_teacher, load_swav_state_dict
from detr_ssl.tasks import all_tasks, get_task
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, BackbonePretextTask, crop_specs
from runs import scalar_histories

BACKBONE_TASKS = sorted(name for name, cls in all_tasks().items() if issubclass(cls, BackbonePretextTask))


@pytest.fixture(scope="module", params=BACKBONE_TASKS)
def trained(request: pytest.FixtureRequest, short_pretext_run: ShortRun) -> PretextRun:
    """The task's short run (tests/tasks/conftest.py), shared with the task's own tests."""
    return short_pretext_run(request.param)


def test_the_backbone_pretext_loss_decreases(trained: PretextRun) -> None:
    losses = scalar_histories(trained.output_dir)["train/loss"]
    assert len(losses) == trained.cfg.optim.epochs  # one step per epoch of 8 photos, each logged
    # Step 1 is left out: DenseCL's first negatives are the queue's random initial vectors.
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (trained.task, first, last)


def test_the_swav_layout_export_is_what_the_teacher_loader_reads(trained: PretextRun) -> None:
    cfg, out = trained.cfg, trained.output_dir
    layout = torch.load(out / SWAV_LAYOUT_FILE, weights_only=True)
    assert all(key.startswith("module.") for key in layout)
    assert "module.layer4.1.bn2.running_var" in layout  # BatchNorm statistics travel with the trunk
    trunk = load_swav_state_dict(out / SWAV_LAYOUT_FILE, cfg.model.backbone)
    torch.testing.assert_close(trunk["conv1.weight"], layout["module.conv1.weight"])
    teacher = build_teacher(out / SWAV_LAYOUT_FILE, cfg.model.backbone, "layer4")
    assert teacher(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_the_export_initialises_the_detector_backbone_both_ways(trained: PretextRun) -> None:
    cfg, out, exported = trained.cfg, trained.output_dir, trained.exported
    trained_trunk = load_swav_state_dict(out / SWAV_LAYOUT_FILE, cfg.model.backbone)
    # 1. --backbone-init: the model config points at the file, normalisation becomes frozen BN.
    for source in (exported, out / SWAV_LAYOUT_FILE):
        model_cfg = with_backbone_init(model_preset("tiny"), source)
        detector = build_model(model_cfg, num_classes=3)
        state = detector.backbone.body.state_dict()
        for key in ("conv1.weight", "layer3.0.bn1.running_mean", "layer4.1.conv2.weight"):
            torch.testing.assert_close(state[key], trained_trunk[key])
    # 2. --pretrained: a detector with frozen-BN backbone takes the trunk and nothing else.
    detector = build_model(model_preset("tiny", backbone_norm="frozen_bn"), num_classes=3)
    missing, dropped = load_pretrained(detector, exported)
    assert not dropped
    assert all(not key.startswith("backbone.") for key in missing)
    torch.testing.assert_close(detector.backbone.body.state_dict()["layer2.0.bn2.running_var"],
                               trained_trunk["layer2.0.bn2.running_var"])


def test_a_backbone_pretext_refuses_a_single_global_crop() -> None:
    from detr_ssl.errors import ConfigError

    base = get_task(BACKBONE_TASKS[0]).preset_config("demo")
    cfg = replace(base, crops=replace(base.crops, num_global=1))
    with pytest.raises(ConfigError, match="2 global crops"):
        pretrain(cfg)


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_colour_strength_is_each_released_codes_and_a_flag_wins(preset: str) -> None:
    strength = {task: parse_pretrain_args(["--task", task, "--preset", preset]).crops.color_strength
                for task in ("swav", "densecl")}
    assert strength == {"swav": 1.0, "densecl": 0.5}
    flagged = parse_pretrain_args(["--task", "densecl", "--preset", preset, "--crops.color-strength", "0.8"])
    assert flagged.crops.color_strength == 0.8
    specs = crop_specs(flagged.crops)
    assert {spec.color_strength for spec in specs} == {0.8}
