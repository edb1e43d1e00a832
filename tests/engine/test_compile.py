"""``--compile``: the whole model compiles without a graph break, the compiled model trains like the eager
one, and its checkpoints are the plain model's."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed

from detr_ssl.benchmarking import synthetic_detection_batch
from detr_ssl.cli.common import make_accelerator
from detr_ssl.config import LossConfig, OptimConfig, PairConfig, RunConfig
from detr_ssl.datasets import CocoDetection, make_train_transforms
from detr_ssl.datasets.demo import DemoPaths
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.engine.trainer import Trainer
from detr_ssl.losses import build_criterion
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.msda.pytorch_backend import ms_deform_attn_pytorch
from detr_ssl.models.msda.registered_op import ms_deform_attn_op
from detr_ssl.tasks.supervised import build_supervised

# One encoder and one decoder layer, 64 x 64 images: the least Inductor has to compile.
MODEL = model_preset("tiny", enc_layers=1, dec_layers=1)
IMAGE_SIZE = 64


def _train(run: RunConfig, data: tuple[Path, Path]) -> Trainer:
    """A Trainer fitted on the demo subset (no evaluation), as scripts/finetune.py builds one."""
    accelerator = make_accelerator(run)
    set_seed(run.seed)
    dataset = CocoDetection(*data, make_train_transforms((IMAGE_SIZE,), IMAGE_SIZE, None))
    model, task = build_supervised("deformable_detr", MODEL, dataset.num_classes, LossConfig(), PairConfig())
    trainer = Trainer(accelerator, model, task, dataset, OptimConfig(batch_size=2), run)
    trainer.fit()
    return trainer


def _losses(output_dir: Path) -> list[float]:
    with (output_dir / "scalars.csv").open() as handle:
        return [float(row["value"]) for row in csv.DictReader(handle) if row["tag"] == "train/loss"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_checkpoints_plain_names(demo_data: DemoPaths, demo_subset,
                                                                     tmp_path: Path) -> None:
    data = (demo_subset(4), demo_data.image_dir)
    run = RunConfig(max_steps=1, log_every=1)
    _train(replace(run, output_dir=tmp_path / "eager"), data)
    compiled = _train(replace(run, output_dir=tmp_path / "compiled", compile=True), data)

    # Inductor fuses and reorders floating-point work, so equal up to rounding, not bit for bit.
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)
    eager_state = load_training_checkpoint(tmp_path / "eager" / "checkpoint.pth")["model"]
    compiled_state = load_training_checkpoint(tmp_path / "compiled" / "checkpoint.pth")["model"]
    assert compiled_state.keys() == eager_state.keys()
    assert not any("_orig_mod" in key for key in compiled_state)
    assert compiled.model.state_dict().keys() == eager_state.keys()

    # Resuming a compiled run, compiled again or eager, loads the checkpoint strictly and trains on.
    for name, compile_again in (("compiled", True), ("eager", False)):
        resumed = _train(replace(run, output_dir=tmp_path / "compiled", resume="auto", max_steps=2,
                                 compile=compile_again), data)
        assert resumed.progress.step == 2, name
        assert all(torch.isfinite(torch.tensor(_losses(tmp_path / "compiled"))))


def _inputs(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    images, mask, targets = synthetic_detection_batch(batch, height, width, num_classes=3, boxes_per_image=2,
                                                      seed=0, pad_last=True)
    return images, mask, targets


def _step(model: torch.nn.Module, forward, criterion, images, mask, targets,
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step of ``model`` run by ``forward`` (the model itself or its compiled form): forward,
    set loss and backward; the loss and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    loss = criterion(forward(images, mask), targets).total
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


# Dynamo and AOTAutograd are what must trace the whole model (fullgraph=True raises at any graph break);
# "aot_eager" runs their graphs without Inductor's C++ code generation, minutes of compiling on 2 cores
# (test_compiled_training_matches_eager_and_checkpoints_plain_names runs Inductor).
@pytest.mark.parametrize("size, overrides", [("tiny", {}), ("r50", {"enc_layers": 2, "dec_layers": 2})])
def test_the_whole_model_compiles_without_a_graph_break_and_trains_like_eager(size: str, overrides: dict) -> None:
    torch.manual_seed(0)
    model = build_model(model_preset(size, dropout=0.0, **overrides), num_classes=3)
    criterion = build_criterion(3, LossConfig())
    images, mask, targets = _inputs(2, 64, 80)
    eager_loss, eager_grads = _step(model, model, criterion, images, mask, targets)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled_loss, compiled_grads = _step(model, compiled, criterion, images, mask, targets)
    assert compiled_loss == pytest.approx(eager_loss.item(), rel=1e-5)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_the_registered_msda_operator_passes_opcheck_and_matches_the_eager_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes, starts = torch.tensor([[4, 5], [2, 3]]), torch.tensor([0, 20])
    value = torch.randn(2, 26, 2, 4, generator=generator, dtype=torch.float64)
    locations = torch.rand(2, 7, 2, 2, 3, 2, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(2, 7, 2, 2, 3, generator=generator, dtype=torch.float64)
    inputs = [value, shapes, starts, locations, weights]
    leaves = [tensor.requires_grad_() for tensor in (value, locations, weights)]
    torch.library.opcheck(ms_deform_attn_op, inputs)  # schema, fake (meta) implementation, autograd registration

    grad_out = torch.randn(2, 7, 8, generator=generator, dtype=torch.float64)
    expected = torch.autograd.grad(ms_deform_attn_pytorch(*inputs), leaves, grad_out)
    got = torch.autograd.grad(ms_deform_attn_op(*inputs), leaves, grad_out)
    for name, want, have in zip(("value", "locations", "weights"), expected, got):
        torch.testing.assert_close(have, want, msg=name)
