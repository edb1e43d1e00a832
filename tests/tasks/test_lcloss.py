"""LC-loss as its own task (BYOL + LC-loss) and as DenseCL's ``--densecl.lc-weight`` option: loss terms and
gradients, BYOL's momentum schedule, presets, and short pretraining runs in which every loss term falls."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.cli.pretrain import parse_pretrain_args, pretrain
from detr_ssl.datasets.multicrop import ViewGeometry, Views
from detr_ssl.errors import ConfigError
from detr_ssl.losses.local_contrast import as_dense_map, lc_loss
from detr_ssl.tasks.backbone_pretext import BYOL_JITTER, RunBatches, build_trunk
from detr_ssl.tasks.densecl import DenseClConfig, DenseClModel, DenseClTask
from detr_ssl.tasks.lcloss import LcLossConfig, LcLossModel, LcLossTask
from pretext_runs import ShortRun
from runs import scalar_histories

TINY = LcLossConfig(projection_dim=8, hidden_dim=16, lc_weight=0.7)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one intra-op thread on 2 shared cores


def _views(batch: int = 4) -> Views:
    """Two 64 px views whose crops overlap (the second shifted and flipped), with their geometry."""
    torch.manual_seed(1)
    sizes = torch.tensor([[120, 120]] * batch)
    first = ViewGeometry(torch.tensor([[0.0, 0.0, 96.0, 96.0]] * batch), torch.zeros(batch, dtype=torch.bool), sizes)
    second = ViewGeometry(torch.tensor([[24.0, 24.0, 120.0, 120.0]] * batch), torch.ones(batch, dtype=torch.bool),
                          sizes)
    return Views([torch.randn(batch, 3, 64, 64), torch.randn(batch, 3, 64, 64)], [first, second])


def _task(options: LcLossConfig = TINY) -> LcLossTask:
    return LcLossTask(replace(LcLossTask.preset_config("demo"), lcloss=options))


def test_the_loss_is_byol_plus_weighted_lc_both_ways_and_trains_the_online_network_only() -> None:
    torch.manual_seed(0)
    model = LcLossModel(build_trunk("resnet18"), TINY).train()
    task, views = _task(), _views()
    loss = task.compute_loss(model, views)
    loss.total.backward()
    assert set(loss.terms) == {"loss_byol", "loss_lc"}
    torch.testing.assert_close(loss.total.detach(), loss.terms["loss_byol"] + 0.7 * loss.terms["loss_lc"])
    assert all(param.grad is None for param in model.target.parameters())
    for part in (model.online.trunk, model.online.projector, model.online.dense_head, model.predictor):
        assert all(param.grad is not None for param in part.parameters())
    assert int(model.batches_seen) == 1
    with torch.no_grad():  # train-mode BatchNorm is deterministic: the same batch gives the same outputs
        out = model(*views.crops)
    sizes = (64, 64)
    directions = [lc_loss(out.online_dense[a], out.target[b].dense, views.geometry[a], views.geometry[b], sizes,
                          TINY.lc_temperature) for a, b in ((0, 1), (1, 0))]
    torch.testing.assert_close(loss.terms["loss_lc"], (directions[0] + directions[1]) / 2)
    cosines = [torch.cosine_similarity(out.predictions[a], out.target[b].projection).mean()
               for a, b in ((0, 1), (1, 0))]
    torch.testing.assert_close(loss.terms["loss_byol"], 2 - cosines[0] - cosines[1])


def test_the_target_follows_byols_cosine_momentum_schedule() -> None:
    task = _task(replace(TINY, base_momentum=0.5))
    task.run_batches = RunBatches(per_epoch=1, total=4)
    assert [task.momentum(step) for step in (0, 2, 4, 9)] == pytest.approx([0.5, 0.75, 1.0, 1.0])
    torch.manual_seed(0)
    model = LcLossModel(build_trunk("resnet18"), TINY).train()
    model.batches_seen.fill_(2)
    with torch.no_grad():
        for param in model.online.parameters():
            param.add_(1.0)
    before = [param.clone() for param in model.target.parameters()]
    task.compute_loss(model, _views(2))
    for old, new, online in zip(before, model.target.parameters(), model.online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)
    assert int(model.batches_seen) == 3


def test_the_schedule_spans_every_batch_of_the_run(demo_photos: Path) -> None:
    from detr_ssl.datasets import ImageFolderDataset

    base = LcLossTask.preset_config("demo")
    images = ImageFolderDataset(demo_photos)
    task = LcLossTask(replace(base, optim=replace(base.optim, batch_size=5, epochs=3)))
    dataset = task.build_dataset(images)
    assert task.schedule_length() == 3 * -(-len(dataset) // 5)
    capped = LcLossTask(replace(base, run=replace(base.run, max_steps=4),
                                optim=replace(base.optim, batch_size=5, grad_accum_steps=2)))
    capped.build_dataset(images)
    assert capped.schedule_length() == 8


def test_presets_views_and_refusals() -> None:
    demo = parse_pretrain_args(["--task", "lcloss"])
    assert (demo.crops.num_global, demo.crops.num_local, demo.crops.global_size) == (2, 0, 64)
    assert (demo.lcloss.projection_dim, demo.lcloss.base_momentum, demo.optim.epochs) == (64, 0.99, 60)
    assert LcLossTask.configure(demo) == demo
    paper = parse_pretrain_args(["--task", "lcloss", "--preset", "paper"])
    assert (paper.crops.global_size, paper.crops.global_scale, paper.lcloss) == (224, (0.08, 1.0), LcLossConfig())
    first, second = LcLossTask(paper).view_specs()
    assert first.color_jitter == second.color_jitter == BYOL_JITTER
    assert (first.blur_probability, second.blur_probability, second.solarize_probability) == (1.0, 0.1, 0.2)
    for flags, message in ((["--crops.num-local", "2"], "exactly two global views"),
                           (["--crops.color-strength", "0.5"], "color-strength"),
                           (["--lcloss.lc-temperature", "0"], "lc-temperature"),
                           (["--lcloss.base-momentum", "1.5"], "base-momentum")):
        with pytest.raises(ConfigError, match=message):
            LcLossTask.configure(parse_pretrain_args(["--task", "lcloss", *flags]))
    with pytest.raises(ValueError, match="geometry"):
        _task().compute_loss(LcLossModel(build_trunk("resnet18"), TINY), Views(_views().crops))


def test_densecl_lc_weight_adds_the_lc_loss_and_leaves_densecls_terms_unchanged() -> None:
    options = DenseClConfig(feature_dim=8, hidden_dim=16, queue_length=6)
    torch.manual_seed(0)
    plain_model = DenseClModel(build_trunk("resnet18"), options).train()
    lc_model = copy.deepcopy(plain_model)
    base = DenseClTask.preset_config("demo")
    plain = DenseClTask(replace(base, densecl=options)).compute_loss(plain_model, _views())
    with_lc = DenseClTask(replace(base, densecl=replace(options, lc_weight=2.0))).compute_loss(lc_model, _views())
    assert set(plain.terms) == {"loss_global", "loss_dense"}
    assert set(with_lc.terms) == {"loss_global", "loss_dense", "loss_lc"}
    for name in plain.terms:
        assert torch.equal(plain.terms[name], with_lc.terms[name])
    torch.testing.assert_close(with_lc.total.detach(), plain.total.detach() + 2.0 * with_lc.terms["loss_lc"])
    views = _views()
    with torch.no_grad():
        query, key = lc_model(*views.crops)
    expected = lc_loss(as_dense_map(query.dense), as_dense_map(key.dense), *views.geometry, (64, 64),
                       options.lc_temperature)
    torch.testing.assert_close(with_lc.terms["loss_lc"], expected)
    with pytest.raises(ConfigError, match="lc-weight"):
        DenseClTask.configure(parse_pretrain_args(["--task", "densecl", "--densecl.lc-weight", "-1"]))


@pytest.mark.parametrize("task", ["lcloss", "densecl"])
def test_every_loss_term_falls_in_a_short_run(task: str, short_pretext_run: ShortRun, eight_photos: Path,
                                             tmp_path: Path) -> None:
    if task == "lcloss":  # the task's short run (tests/tasks/pretext_runs.py), shared with other tests
        run = short_pretext_run(task)
        assert run.cfg.lcloss.lc_weight == 1
        out = run.output_dir
    else:  # DenseCL with the LC term added
        out = tmp_path / "run"
        pretrain(parse_pretrain_args(["--task", task, "--preset", "demo", "--data", str(eight_photos), "--epochs", "30",
                                      "--batch-size", "8", "--lr-drop", "1000", "--output-dir", str(out),
                                      "--log-every", "1", "--checkpoint-every", "1000",
                                      "--densecl.lc-weight", "1", "--densecl.queue-length", "8"]))
    histories = {tag: values for tag, values in scalar_histories(out).items() if tag.startswith("train/loss")}
    expected = {"lcloss": {"loss", "loss_byol", "loss_lc"}, "densecl": {"loss", "loss_global", "loss_dense", "loss_lc"}}
    assert {tag.removeprefix("train/") for tag in histories} == expected[task]
    for tag, values in histories.items():
        assert len(values) == 30
        # Step 1 is left out: DenseCL's first negatives are the queue's random initial vectors.
        first, last = sum(values[1:6]) / 5, sum(values[-5:]) / 5
        assert last < 0.95 * first, (tag, first, last)
