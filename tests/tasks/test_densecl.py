"""DenseCL: the momentum encoder and queues, the presets, and pretraining runs (one process and two)
whose exports load as a teacher."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from launch import FORKED_GLOO, run_main_in_two_processes
from pretext_runs import ShortRun
from runs import load_exported_trunk, scalar_histories

from detr_ssl.blocks.momentum import ema_update_
from detr_ssl.cli.pretrain import main as pretrain_main, parse_pretrain_args
from detr_ssl.datasets.multicrop import Views
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.errors import ConfigError
from detr_ssl.models.teachers import build_teacher
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, build_trunk
from detr_ssl.tasks.densecl import DenseClConfig, DenseClModel, DenseClTask

TINY = DenseClConfig(feature_dim=8, hidden_dim=16, queue_length=6)


def _model(seed: int = 0) -> DenseClModel:
    torch.manual_seed(seed)
    return DenseClModel(build_trunk("resnet18"), TINY)


def test_loss_trains_the_query_encoder_only_and_enqueues_the_keys() -> None:
    model = _model().train()
    task = DenseClTask(replace(DenseClTask.preset_config("demo"), densecl=TINY))
    torch.manual_seed(1)
    views = Views([torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)])
    loss = task.compute_loss(model, views)
    loss.total.backward()
    assert set(loss.terms) == {"loss_global", "loss_dense"} and torch.isfinite(loss.total)
    expected = (1 - TINY.dense_weight) * loss.terms["loss_global"] + TINY.dense_weight * loss.terms["loss_dense"]
    torch.testing.assert_close(loss.total.detach(), expected)
    assert all(param.grad is None for param in model.momentum_encoder.parameters())
    for head in (model.encoder.trunk, model.encoder.projection_head, model.encoder.dense_head):
        assert all(param.grad is not None for param in head.parameters())
    assert int(model.queue.pointer) == 4 and int(model.dense_queue.pointer) == 4
    with torch.no_grad():  # the key encoder is deterministic in train mode: same batch, same keys
        key = model.momentum_encoder(views.crops[1])
    torch.testing.assert_close(model.queue.keys[:4], key.embedding)
    torch.testing.assert_close(model.dense_queue.keys[:4], key.pooled_dense)


def test_state_dict_carries_queues_pointer_and_key_encoder() -> None:
    """What a checkpoint resume needs: a fresh model loading the state gets the queues and key encoder back."""
    trained = _model(0)
    with torch.no_grad():
        for param in trained.encoder.parameters():
            param.add_(0.1)
    ema_update_(trained.momentum_encoder, trained.encoder, 0.0)  # key encoder != its initial copy
    trained.queue.push(torch.randn(3, TINY.feature_dim))
    trained.dense_queue.push(torch.randn(3, TINY.feature_dim))
    fresh = _model(1)
    fresh.load_state_dict(trained.state_dict())
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert int(fresh.queue.pointer) == 3 and any(k.startswith("momentum_encoder.") for k in trained.state_dict())


def test_presets_use_two_global_views_and_refuse_others() -> None:
    demo = parse_pretrain_args(["--task", "densecl"])
    assert (demo.crops.num_global, demo.crops.num_local, demo.crops.global_size) == (2, 0, 64)
    assert demo.crops.global_scale == (0.2, 1.0)
    assert (demo.densecl.queue_length, demo.densecl.feature_dim, demo.densecl.momentum) == (32, 64, 0.99)
    assert DenseClTask.configure(demo) == demo
    paper = parse_pretrain_args(["--task", "densecl", "--preset", "paper"])
    assert (paper.crops.num_global, paper.crops.num_local, paper.crops.global_size) == (2, 0, 224)
    assert paper.crops.global_scale == (0.2, 1.0) and paper.densecl == DenseClConfig()
    with pytest.raises(ConfigError, match="exactly two global views"):
        DenseClTask.configure(parse_pretrain_args(["--task", "densecl", "--crops.num-local", "2"]))
    with pytest.raises(ConfigError, match="queue-length"):
        DenseClTask.configure(parse_pretrain_args(["--task", "densecl", "--densecl.queue-length", "0"]))


def test_pretraining_lowers_the_loss_and_exports_a_teacher(short_pretext_run: ShortRun) -> None:
    # 64 px views, resnet18, a queue of one batch: full of real keys after the first step.
    run = short_pretext_run("densecl")
    exported, out = run.exported, run.output_dir

    losses = scalar_histories(out)["train/loss"]
    assert len(losses) == 30
    # Step 1 scores against the random initial queue (unusually easy negatives), so it is left out.
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)

    state = load_training_checkpoint(out / "checkpoint.pth")["model"]
    assert int(state["queue.pointer"]) == 0 and {"queue.keys", "dense_queue.keys"} <= state.keys()

    load_exported_trunk(exported, out / SWAV_LAYOUT_FILE)


@pytest.mark.slow
@FORKED_GLOO
def test_two_process_pretraining_shares_one_queue(tmp_path: Path, demo_photos: Path) -> None:
    out = tmp_path / "pre"
    stdout = run_main_in_two_processes(pretrain_main, ["--cpu", "--task", "densecl", "--max-steps", "2", "--batch-size",
                                                       "8", "--densecl.queue-length", "48", "--output-dir", str(out)],
                                       tmp_path)
    assert "(2 processes)" in stdout
    # 2 steps x 2 processes x 8 keys enqueued on every process (16 if each kept only its own keys).
    state = load_training_checkpoint(out / "checkpoint.pth")["model"]
    assert int(state["queue.pointer"]) == 32 == int(state["dense_queue.pointer"])
    assert (out / "pretrained.pth").is_file()
    assert build_teacher(out / SWAV_LAYOUT_FILE, "resnet18").dim == 512
