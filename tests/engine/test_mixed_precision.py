"""Mixed precision: the MSDA op computes in float32 under autocast, matching and losses upcast the
predictions, and short bf16 runs (fine-tuning, DetReg and UP-DETR pretraining) stay finite.

The runs go through the scripts in subprocesses: Accelerate's state is a per-process singleton, so a bf16
Accelerator in this process would either be refused (after an fp32 one) or leak bf16 into later tests.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import detr_ssl.models.msda.dispatch as msda_dispatch
from detr_ssl.datasets.demo import DemoPaths
from detr_ssl.engine.checkpoint import load_training_checkpoint
from detr_ssl.losses import SetCriterion
from detr_ssl.matcher import HungarianMatcher
from detr_ssl.models.msda import MSDeformAttn
from detr_ssl.models.outputs import DetectionOutput

REPO = Path(__file__).resolve().parents[2]


def _cpu_bf16_problem() -> str | None:
    """Why bfloat16 autocast cannot run on this CPU, or None when it can (checked, not assumed)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.nn.functional.linear(torch.ones(4, 8), torch.full((3, 8), 0.5))
    except RuntimeError as exc:
        return f"bfloat16 autocast fails on this CPU: {exc}"
    if out.dtype != torch.bfloat16 or not torch.equal(out.float(), torch.full((4, 3), 4.0)):
        return f"bfloat16 autocast on this CPU gives {out.dtype} {out.flatten()[:3].tolist()}"
    return None


BF16_PROBLEM = _cpu_bf16_problem()
needs_cpu_bf16 = pytest.mark.skipif(BF16_PROBLEM is not None, reason=BF16_PROBLEM or "")
AUTOCAST_CASES = [
    pytest.param("cpu", torch.bfloat16, marks=needs_cpu_bf16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]


# -- the MSDA op ---------------------------------------------------------------------------------------

def _attention_and_inputs(device: str) -> tuple[MSDeformAttn, tuple[torch.Tensor, ...]]:
    """An MSDA layer whose offsets (about a pixel around the initial pattern) and attention weights depend
    on the query, and its inputs: 40 queries attending into levels 12x12 and 6x6 of random features."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=64, n_levels=2, n_heads=4, n_points=3, backend="pytorch")
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(std=0.1)
        attn.attention_weights.weight.normal_(std=0.5)
    shapes = torch.tensor([[12, 12], [6, 6]])
    starts = torch.tensor([0, 144])
    query = torch.randn(2, 40, 64)
    reference = torch.rand(2, 40, 2, 2)
    memory = torch.randn(2, 180, 64)
    return attn.to(device), tuple(t.to(device) for t in (query, reference, memory, shapes, starts))


def _output_and_grads(attn: MSDeformAttn, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype | None,
                      backward_inside: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The layer's output (float32) and the gradients of parameters, query and memory, under autocast to
    ``dtype`` (None: no autocast); the backward runs inside the autocast region if ``backward_inside``."""
    attn.zero_grad(set_to_none=True)
    query, reference, memory, shapes, starts = inputs
    query, memory = query.clone().requires_grad_(), memory.clone().requires_grad_()
    device = query.device.type
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = attn(query, reference, memory, shapes, starts)
        loss = (out.float() ** 2).sum()
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    grads = {name: p.grad for name, p in attn.named_parameters()} | {"query": query.grad, "memory": memory.grad}
    return out, grads


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.detach().float() - expected.detach()).norm() / expected.detach().norm())


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST_CASES)
def test_msda_under_autocast_computes_in_float32_close_to_the_float32_layer(device: str, dtype: torch.dtype,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    attn, inputs = _attention_and_inputs(device)
    expected, expected_grads = _output_and_grads(attn, inputs, None)

    seen = []
    kernel = msda_dispatch.ms_deform_attn_pytorch

    def spy(*args: torch.Tensor) -> torch.Tensor:
        seen.append(([t.dtype for t in args if t.is_floating_point()], torch.is_autocast_enabled(device)))
        return kernel(*args)

    monkeypatch.setattr(msda_dispatch, "ms_deform_attn_pytorch", spy)
    out, grads = _output_and_grads(attn, inputs, dtype)
    # The projections ran in half precision, the op on float32 inputs with autocast off, and its result
    # went back to the value's (half) dtype for the output projection.
    assert seen == [([torch.float32] * 3, False)]
    assert out.dtype == dtype and torch.isfinite(out).all()
    # Half precision rounds every projection's inputs, weights and outputs (bf16: 8 significant bits,
    # ~0.4% each), offsets included: ~1% here, where neighbouring pixels of the random features are unrelated.
    assert _relative_error(out, expected) < 3e-2
    for name, grad in expected_grads.items():
        assert grads[name] is not None and grads[name].dtype == torch.float32, name
        assert torch.isfinite(grads[name]).all(), name
        assert _relative_error(grads[name], grad) < 5e-2, name


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST_CASES)
def test_msda_backward_inside_the_autocast_region_gives_the_same_gradients(device: str, dtype: torch.dtype) -> None:
    attn, inputs = _attention_and_inputs(device)
    _, outside = _output_and_grads(attn, inputs, dtype)
    _, inside = _output_and_grads(attn, inputs, dtype, backward_inside=True)
    for name, grad in outside.items():
        torch.testing.assert_close(inside[name], grad, msg=name)


# -- matching and losses -------------------------------------------------------------------------------

def test_matching_and_set_loss_upcast_half_precision_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, 3, generator=generator).bfloat16()
    boxes = torch.rand(2, 12, 4, generator=generator).mul(0.5).add(0.2).bfloat16()
    aux = [DetectionOutput(logits=(logits * 0.5), boxes=boxes.flip(1))]
    targets = [{"labels": torch.tensor([0, 2, 1]), "boxes": torch.tensor([[0.31, 0.42, 0.203, 0.1],
                                                                          [0.6, 0.61, 0.3, 0.25],
                                                                          [0.5, 0.5, 0.9, 0.9]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.3, 0.1, 0.2]])}]
    costs = []
    stacked_cost = HungarianMatcher.stacked_cost

    def spy(self: HungarianMatcher, *args: object) -> np.ndarray:
        costs.append(stacked_cost(self, *args))
        return costs[-1]

    monkeypatch.setattr(HungarianMatcher, "stacked_cost", spy)
    criterion = SetCriterion(num_classes=3)
    half = criterion(DetectionOutput(logits=logits, boxes=boxes, aux=aux), targets)
    aux_full = [DetectionOutput(logits=a.logits.float(), boxes=a.boxes.float()) for a in aux]
    full = criterion(DetectionOutput(logits=logits.float(), boxes=boxes.float(), aux=aux_full), targets)
    # Costs are float32, so half-precision predictions are matched and scored exactly as their float32 values.
    assert costs and all(cost.dtype == np.float32 for cost in costs)
    assert half.layer_indices.keys() == full.layer_indices.keys()
    for suffix, indices in full.layer_indices.items():
        for (query, target), (query_half, target_half) in zip(indices, half.layer_indices[suffix]):
            assert torch.equal(query, query_half) and torch.equal(target, target_half)
    assert half.total.dtype == torch.float32
    for name, value in full.terms.items():
        assert half.terms[name].dtype == torch.float32, name
        torch.testing.assert_close(half.terms[name], value, msg=name)


# -- short runs ----------------------------------------------------------------------------------------

def _run_script(script: str, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _train_scalars(output_dir: Path) -> dict[str, list[float]]:
    """Every logged ``train/*`` scalar, by tag, in step order."""
    scalars: dict[str, list[float]] = {}
    with (output_dir / "scalars.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["tag"].startswith("train/"):
                scalars.setdefault(row["tag"], []).append(float(row["value"]))
    return scalars


def _assert_finite_run(output_dir: Path, steps: int) -> dict[str, list[float]]:
    scalars = _train_scalars(output_dir)
    assert len(scalars["train/loss"]) == steps
    for tag, values in scalars.items():
        assert all(math.isfinite(v) for v in values), (tag, values)
    model = load_training_checkpoint(output_dir / "checkpoint.pth")["model"]
    for name, tensor in model.items():
        if tensor.is_floating_point():  # the weights stay float32: autocast only lowers the computation
            assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all(), name
    return scalars


@pytest.mark.slow
@needs_cpu_bf16
def test_short_bf16_finetune_run_is_finite_and_close_to_float32(demo_data: DemoPaths, demo_subset,
                                                                tmp_path: Path) -> None:
    subset = str(demo_subset(8))
    flags = ["--preset", "demo", "--train-json", subset, "--val-json", subset, "--images", str(demo_data.image_dir),
             "--train-scales", "96", "--max-size", "96", "--eval-size", "96", "--max-steps", "3", "--log-every", "1",
             "--num-workers", "0"]
    losses = {}
    for precision in ("bf16", "no"):
        out = tmp_path / precision
        _run_script("finetune.py", [*flags, "--mixed-precision", precision, "--output-dir", str(out)], tmp_path)
        losses[precision] = _assert_finite_run(out, steps=3)["train/loss"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    # Same data, same initial weights: the first step differs by bf16 rounding only.
    assert losses["bf16"][0] == pytest.approx(losses["no"][0], rel=2e-2), losses


@pytest.mark.slow
@needs_cpu_bf16
@pytest.mark.parametrize("task", ["detreg", "updetr"])
def test_short_bf16_pretraining_run_is_finite(task: str, demo_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run_script("pretrain.py", ["--task", task, "--preset", "demo", "--mixed-precision", "bf16", "--max-steps", "2",
                                "--log-every", "1", "--num-workers", "0", "--train-scales", "96", "--max-size", "96",
                                "--output-dir", str(out)], tmp_path)
    _assert_finite_run(out, steps=2)
    assert (out / "pretrained.pth").is_file()
