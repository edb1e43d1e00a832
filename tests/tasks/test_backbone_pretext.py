"""Every backbone pretext (SwAV, DenseCL) trains the ResNet on unlabeled photos and exports it in the
layouts the rest of the library reads: detector backbone, DetReg teacher, backbone init."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.cli.pretrain import pretrain
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.config import with_backbone_init
from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.teachers import build_teacher, load_swav_state_dict
from detr_ssl.tasks import all_tasks, get_task
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, BackbonePretextTask, crop_specs
from runs import copy_photos, scalar_histories

BACKBONE_TASKS = sorted(name for name, cls in all_tasks().items() if issubclass(cls, BackbonePretextTask))


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory: pytest.TempPathFactory, demo_photos: Path) -> Path:
    return copy_photos(demo_photos, tmp_path_factory.mktemp("photos"), 8)


#: Per task, options shrunk for an 8-image run: DenseCL's queue no longer than a batch; SwAV's batch of 8
#: partitioned equally over fewer clusters.
SMALL_OPTIONS: dict[str, dict] = {
    "densecl": {"densecl": replace(get_task("densecl").preset_config("demo").densecl, queue_length=8)},
    "swav": {"swav": replace(get_task("swav").preset_config("demo").swav, num_prototypes=4)},
    "regioncl": {"regioncl": replace(get_task("regioncl").preset_config("demo").regioncl, queue_length=8)},
    # SCFS: no teacher-temperature warm-up (a warming teacher raises its targets' entropy, and the loss) and a
    # faster teacher, so 30 steps show the fall.
    "scfs": {"scfs": replace(get_task("scfs").preset_config("demo").scfs, warmup_teacher_temperature_epochs=0,
                             momentum=0.9)},
    "mcl": {"mcl": replace(get_task("mcl").preset_config("demo").mcl, temperature=0.2)},  # T=1: ~1% in 30 steps
    "detco": {"detco": replace(get_task("detco").preset_config("demo").detco, queue_length=8)},
    "ccop": {"ccop": replace(get_task("ccop").preset_config("demo").ccop, image_queue_length=8, roi_queue_length=64,
                             head_dropout=0.0)},
}
#: Per task, milder views where the released ones leave the loss near chance for this short run (RegionCL's
#: MoCo instance term on 8 photos): large crops, no colour jitter.
SMALL_CROPS: dict[str, dict] = {"regioncl": {"global_scale": (0.8, 1.0), "color_strength": 0.0},
                               "mcl": {"global_scale": (0.8, 1.0)},
                               "detco": {"global_scale": (0.8, 1.0), "color_strength": 0.0},
                               "ccop": {"global_scale": (0.8, 1.0)}}


def _run(task: str, images: Path, out: Path, steps: int):
    base = get_task(task).preset_config("demo")
    cfg = replace(
        base, data=replace(base.data, data=images),
        # 64 px leaves ResNet-18 a 2x2 map for DenseCL's dense matching; its queue no longer than a batch
        # makes the negatives real embeddings after the first step.
        crops=replace(base.crops, global_size=64, local_size=32, num_local=min(base.crops.num_local, 2),
                      **SMALL_CROPS.get(task, {})),
        optim=replace(base.optim, epochs=steps, batch_size=8, lr=1e-3, lr_drop=1000),
        run=replace(base.run, output_dir=out, log_every=1, checkpoint_every=1000),
        **SMALL_OPTIONS.get(task, {}),
    )
    return cfg, pretrain(cfg)


@pytest.fixture(scope="module", params=BACKBONE_TASKS)
def trained(request, four_photos: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    cfg, exported = _run(request.param, four_photos, out, steps=30)
    return request.param, cfg, out, exported


def test_the_backbone_pretext_loss_decreases(trained) -> None:
    task, _, out, _ = trained
    losses = scalar_histories(out)["train/loss"]
    assert len(losses) == 30
    # Step 1 is left out: DenseCL's first negatives are the queue's random initial vectors.
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (task, first, last)


def test_the_swav_layout_export_is_what_the_teacher_loader_reads(trained) -> None:
    task, cfg, out, _ = trained
    layout = torch.load(out / SWAV_LAYOUT_FILE, weights_only=True)
    assert all(key.startswith("module.") for key in layout)
    assert "module.layer4.1.bn2.running_var" in layout  # BatchNorm statistics travel with the trunk
    trunk = load_swav_state_dict(out / SWAV_LAYOUT_FILE, cfg.model.backbone)
    torch.testing.assert_close(trunk["conv1.weight"], layout["module.conv1.weight"])
    teacher = build_teacher(out / SWAV_LAYOUT_FILE, cfg.model.backbone, "layer4")
    assert teacher(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_the_export_initialises_the_detector_backbone_both_ways(trained) -> None:
    _, cfg, out, exported = trained
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


def test_a_backbone_pretext_refuses_a_single_global_crop(four_photos: Path, tmp_path: Path) -> None:
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
