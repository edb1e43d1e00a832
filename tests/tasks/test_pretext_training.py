"""Every registered pretext task pretrains the tiny detector on the demo photos: its loss goes down,
and the exported detector loads into fine-tuning."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.cli.pretrain import pretrain
from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.pair_detr import PairDETR
from detr_ssl.tasks import all_tasks, get_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask

DETECTOR_TASKS = sorted(name for name, cls in all_tasks().items() if not issubclass(cls, BackbonePretextTask))
PAIR_ONLY = ("corner_", "center_embedding")
#: Optimizer steps (epochs of one batch of the 4 photos): each task's loss falls by a third or more in them.
STEPS = 20


def _series(path: Path, tag: str) -> list[float]:
    with path.open() as handle:
        return [float(row["value"]) for row in csv.DictReader(handle) if row["tag"] == tag]


@pytest.mark.parametrize("task", DETECTOR_TASKS)
def test_pretext_loss_decreases_and_checkpoint_fine_tunes(task: str, demo_photos: Path, tmp_path: Path) -> None:
    base = get_task(task).preset_config("demo")
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted(demo_photos.iterdir())[:4]:
        (images / photo.name).write_bytes(photo.read_bytes())
    cfg = replace(
        base,
        data=replace(base.data, data=images, train_scales=(96,), max_size=96),
        optim=replace(base.optim, epochs=STEPS, batch_size=4, lr=1e-3, lr_drop=1000),
        run=replace(base.run, output_dir=tmp_path / "run", log_every=1, checkpoint_every=1000),
    )
    exported = pretrain(cfg)
    losses = _series(tmp_path / "run" / "scalars.csv", "train/loss")
    assert len(losses) == STEPS
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)

    fine_tune_models = [build_model(model_preset("tiny"), num_classes=5)]
    if task == "pairdetr":  # its checkpoint also fine-tunes as a Pair DETR
        fine_tune_models.append(PairDETR(model_preset("tiny"), num_classes=5))
    for model in fine_tune_models:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        missing, dropped = load_pretrained(model, exported)
        assert all("class_heads" in key for key in missing), missing
        assert all("class_heads" in key or key.startswith(PAIR_ONLY) for key in dropped), dropped
        changed = [k.removeprefix("detector.") for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)
