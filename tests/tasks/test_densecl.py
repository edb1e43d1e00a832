"""DenseCL: the momentum encoder and queues, the presets, and pretraining runs (one process and two)
whose exports load as a teacher."""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detr_ssl.datasets.multicrop import Views
from detr_ssl.models.teachers import build_teacher, load_swav_state_dict
from launch import TWO_CPU_PROCESSES

from detr_ssl.cli.pretrain import pretrain
from detr_ssl.config import DenseClConfig, demo_pretrain, parse_pretrain_args
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.errors import ConfigError
from detr_ssl.tasks.backbone_pretext import SWAV_LAYOUT_FILE, build_trunk
from detr_ssl.tasks.densecl import DenseClModel, DenseClTask

REPO = Path(__file__).resolve().parents[2]
TINY = DenseClConfig(feature_dim=8, hidden_dim=16, queue_length=6)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Training runs with one intra-op thread: on the shared 2-core test machine, two threads competing with
    other processes run several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> DenseClModel:
    torch.manual_seed(seed)
    return DenseClModel(build_trunk("resnet18"), TINY)


def test_momentum_update_is_exact_and_copies_batchnorm_statistics() -> None:
    model = _model()
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.add_(0.1 * torch.randn_like(param))
        model.encoder.train()(torch.randn(2, 3, 32, 32))  # moves the query's BN running statistics
    key_before = {k: v.clone() for k, v in model.momentum_encoder.named_parameters()}
    query = dict(model.encoder.named_parameters())
    momentum = 0.9
    model.momentum_update(momentum)
    key_after = dict(model.momentum_encoder.named_parameters())
    assert key_after.keys() == query.keys() and len(query) > 0
    for name, value in key_after.items():
        assert torch.equal(value, momentum * key_before[name] + (1 - momentum) * query[name]), name
        assert not torch.equal(value, key_before[name]), name
        assert not value.requires_grad
    query_buffers = dict(model.encoder.named_buffers())
    key_buffers = dict(model.momentum_encoder.named_buffers())
    assert key_buffers.keys() == query_buffers.keys() and len(query_buffers) > 0
    assert all(torch.equal(key_buffers[name], value) for name, value in query_buffers.items())


def test_loss_trains_the_query_encoder_only_and_enqueues_the_keys() -> None:
    model = _model().train()
    task = DenseClTask(replace(demo_pretrain(), task="densecl", densecl=TINY))
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
    assert int(model.queue_pointer) == 4
    with torch.no_grad():  # the key encoder is deterministic in train mode: same batch, same keys
        key = model.momentum_encoder(views.crops[1])
    torch.testing.assert_close(model.queue[:4], key.embedding)
    torch.testing.assert_close(model.dense_queue[:4], key.pooled_dense)


def test_queue_is_a_ring_buffer() -> None:
    model = _model()
    initial = model.queue.clone()
    keys = F.normalize(torch.randn(16, TINY.feature_dim), dim=1)
    model.enqueue(keys[:4], -keys[:4])
    assert int(model.queue_pointer) == 4
    assert torch.equal(model.queue[:4], keys[:4]) and torch.equal(model.queue[4:], initial[4:])
    assert torch.equal(model.dense_queue[:4], -keys[:4])
    model.enqueue(keys[4:8], -keys[4:8])  # rows 4, 5, then 0, 1
    assert int(model.queue_pointer) == 2
    assert torch.equal(model.queue, keys[[6, 7, 2, 3, 4, 5]])
    model.enqueue(keys[8:16], -keys[8:16])  # more keys than rows: the newest 6, from row 2 on
    assert int(model.queue_pointer) == 2
    assert torch.equal(model.queue, keys[[14, 15, 10, 11, 12, 13]])


def test_state_dict_carries_queues_pointer_and_key_encoder() -> None:
    """What a checkpoint resume needs: a fresh model loading the state gets the queues and key encoder back."""
    trained = _model(0)
    trained.momentum_update(0.0)  # key encoder != its initial copy
    trained.enqueue(torch.randn(3, TINY.feature_dim), torch.randn(3, TINY.feature_dim))
    fresh = _model(1)
    fresh.load_state_dict(trained.state_dict())
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert int(fresh.queue_pointer) == 3 and any(k.startswith("momentum_encoder.") for k in trained.state_dict())


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


def test_pretraining_lowers_the_loss_and_exports_a_teacher(demo_photos: Path, tmp_path: Path, one_thread) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted(demo_photos.iterdir())[:8]:
        (images / photo.name).write_bytes(photo.read_bytes())
    base = DenseClTask.defaults(replace(demo_pretrain(), task="densecl"))  # 64 px views, resnet18
    cfg = replace(base, data=replace(base.data, data=images),
                  optim=replace(base.optim, epochs=30, batch_size=8, lr=1e-3, lr_drop=1000),
                  densecl=replace(base.densecl, queue_length=8),  # full of real keys after the first step
                  run=replace(base.run, output_dir=tmp_path / "run", log_every=1, checkpoint_every=1000))
    exported = pretrain(cfg)

    with (tmp_path / "run" / "scalars.csv").open() as handle:
        losses = [float(row["value"]) for row in csv.DictReader(handle) if row["tag"] == "train/loss"]
    assert len(losses) == 30
    # Step 1 scores against the random initial queue (unusually easy negatives), so it is left out.
    first, last = sum(losses[1:6]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)

    state = load_training_checkpoint(tmp_path / "run" / "checkpoint.pth")["model"]
    assert int(state["queue_pointer"]) == 0 and {"queue", "dense_queue"} <= state.keys()

    trunk_state = load_swav_state_dict(tmp_path / "run" / SWAV_LAYOUT_FILE, "resnet18")
    pretrained = torch.load(exported, weights_only=True)["model"]
    assert trunk_state.keys() == {k.removeprefix("backbone.body.") for k in pretrained}
    trunk = build_trunk("resnet18")
    missing, unexpected = trunk.load_state_dict(trunk_state, strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
    teacher = build_teacher(tmp_path / "run" / SWAV_LAYOUT_FILE, "resnet18")
    crops = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(teacher(crops), trunk.eval()(crops), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_two_process_pretraining_shares_one_queue(tmp_path: Path, demo_photos: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "pre"
    result = subprocess.run([*TWO_CPU_PROCESSES, str(REPO / "scripts" / "pretrain.py"), "--cpu", "--task", "densecl",
                             "--max-steps", "2", "--batch-size", "8", "--densecl.queue-length", "48",
                             "--output-dir", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # 2 steps x 2 processes x 8 keys enqueued on every process (16 if each kept only its own keys).
    state = load_training_checkpoint(out / "checkpoint.pth")["model"]
    assert int(state["queue_pointer"]) == 32
    assert (out / "pretrained.pth").is_file()
    assert build_teacher(out / SWAV_LAYOUT_FILE, "resnet18").dim == 512
