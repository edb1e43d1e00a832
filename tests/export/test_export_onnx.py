"""ONNX export: the gather-only MSDA equals the reference op; an exported detector runs in onnxruntime at
batch sizes and image sizes it was not traced with and detects what the PyTorch detector detects."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.cli.export_onnx import cli
from detr_ssl.config import to_plain
from detr_ssl.detector import load_detector
from detr_ssl.evaluation.postprocess import postprocess
from detr_ssl.export.onnx_export import OnnxDetector, export_onnx
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.models.msda import dispatch, ms_deform_attn_reference, multi_scale_deformable_attention
from detr_ssl.models.msda.export_formulation import ms_deform_attn_export

onnxruntime = pytest.importorskip("onnxruntime", reason="the export is run in onnxruntime: pip install -e '.[test]'")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

# Two levels (strides 16 and 32) and one layer each way: the export's time grows with the size of the graph.
SMALL = model_preset("tiny", num_feature_levels=2, enc_layers=1, dec_layers=1, hidden_dim=32, ffn_dim=64)
VARIANTS = {"base": SMALL, "two_stage_box_refine": replace(SMALL, two_stage=True, with_box_refine=True)}
NUM_CLASSES = 4  # 30 queries x 4 classes: top-100 is a real selection


def msda_inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Three levels of different sizes; locations over [-0.4, 1.4] plus points on the borders and far out."""
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 9], [3, 5], [1, 2]])
    areas = shapes.prod(1)
    starts = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
    batch, queries, heads, channels, points = 2, 7, 3, 5, 4
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=generator, dtype=dtype)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator, dtype=dtype) * 1.8 - 0.4
    special = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-3.0, 0.5], [0.5, 9.0], [-1e6, 1e6]], dtype=dtype)
    locations.view(-1, 2)[: len(special) * 11 : 11] = special
    weights = torch.randn(batch, queries, heads, len(shapes) * points, generator=generator, dtype=dtype)
    return value, shapes, starts, locations, weights.softmax(-1).view(batch, queries, heads, len(shapes), points)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_export_formulation_equals_the_reference(dtype: torch.dtype, tolerance: float) -> None:
    inputs = msda_inputs(dtype)
    expected = ms_deform_attn_reference(*inputs)
    torch.testing.assert_close(ms_deform_attn_export(*inputs), expected, rtol=0, atol=tolerance)


def test_export_mode_routes_the_op_only_inside_its_block(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def spy(*inputs: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return ms_deform_attn_export(*inputs)

    monkeypatch.setattr(dispatch, "ms_deform_attn_export", spy)
    inputs = msda_inputs(torch.float32)
    with dispatch.export_mode():
        inside = multi_scale_deformable_attention(*inputs, backend="pytorch")
    outside = multi_scale_deformable_attention(*inputs, backend="pytorch")
    assert calls == [1]
    torch.testing.assert_close(inside, outside)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, ONNX file) of a tiny detector with seeded random weights, exported once per variant."""
    config = VARIANTS[request.param]
    torch.manual_seed(0)
    model = build_model(config, NUM_CLASSES)
    folder = tmp_path_factory.mktemp(request.param)
    checkpoint = folder / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "config": {"model": to_plain(config), "architecture": "deformable_detr"},
                "num_classes": NUM_CLASSES, "category_ids": [1, 2, 3, 5], "category_names": list("abcd")}, checkpoint)
    return checkpoint, export_onnx(checkpoint, folder / "detector.onnx")


def padded_batch(sizes: list[tuple[int, int]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``sizes`` padded to the largest, as the data loader pads them."""
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(sizes), 3, height, width)
    mask = torch.ones(len(sizes), height, width, dtype=torch.bool)
    for index, (h, w) in enumerate(sizes):
        images[index, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        mask[index, :h, :w] = False
    return images, mask


def assert_same_detections(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same scores in the same order; each expected (label, box) at its rank or among the ranks tied with it."""
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=1e-5)
    for rank, score in enumerate(expected["scores"]):
        tied = ((got["scores"] - score).abs() <= 2e-5).nonzero().flatten().tolist()
        assert any(got["labels"][j] == expected["labels"][rank]
                   and torch.allclose(got["boxes"][j], expected["boxes"][rank], rtol=0, atol=1e-2) for j in tied), rank


# The trace used a batch of 2 at 99 x 132 pixels: other batch sizes and image sizes, padded batches.
@pytest.mark.parametrize("sizes", [[(70, 100)], [(64, 96), (90, 41), (45, 45)]], ids=["1x70x100", "3x90x96"])
def test_onnxruntime_detects_what_pytorch_detects(exported: tuple[Path, Path], sizes: list[tuple[int, int]]) -> None:
    checkpoint, onnx_path = exported
    images, mask = padded_batch(sizes, seed=len(sizes))
    model = load_detector(checkpoint).model
    with torch.no_grad():
        expected = model(images, mask)
    got = OnnxDetector(onnx_path)(images, mask)
    assert got.logits.shape == expected.logits.shape and got.boxes.shape == expected.boxes.shape
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.boxes, expected.boxes, rtol=0, atol=1e-4)
    orig_sizes = torch.tensor(sizes)
    for got_image, expected_image in zip(postprocess(got, orig_sizes), postprocess(expected, orig_sizes)):
        assert len(expected_image["scores"]) == 100
        assert_same_detections(got_image, expected_image)


def test_the_graph_gathers_instead_of_grid_sample_and_has_dynamic_axes(exported: tuple[Path, Path]) -> None:
    graph = onnx.load(str(exported[1])).graph
    assert "GridSample" not in {node.op_type for node in graph.node}
    dims = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in [*graph.input, *graph.output]}
    assert dims["images"] == ["batch", 3, "height", "width"]
    assert dims["padding_mask"] == ["batch", "height", "width"]
    assert dims["logits"][0] == dims["boxes"][0] == "batch"
    assert (dims["logits"][2], dims["boxes"][2]) == (NUM_CLASSES, 4)


def test_a_missing_checkpoint_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "checkpoint.pth"
    monkeypatch.setattr(sys, "argv", ["export_onnx.py", str(missing), "--output", str(tmp_path / "out.onnx")])
    assert cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(missing) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()
