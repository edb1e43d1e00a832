"""Multi-scale deformable attention: the fast backend against the grid_sample reference, dispatch, the layer."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from detr_ssl.errors import BackendUnavailableError
from detr_ssl.models.msda import (
    MSDeformAttn,
    ms_deform_attn_reference,
    multi_scale_deformable_attention,
    resolve_backend,
)
from detr_ssl.models.msda import mmcv_backend
from detr_ssl.models.msda.pytorch_backend import ms_deform_attn_pytorch


def make_inputs(
    batch: int = 2,
    heads: int = 3,
    channels: int = 4,
    shapes: tuple[tuple[int, int], ...] = ((5, 7), (3, 4), (1, 2)),
    queries: int = 6,
    points: int = 3,
    dtype: torch.dtype = torch.float64,
    spread: float = 0.3,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Random op inputs; locations cover ``[-spread, 1 + spread]`` so some taps fall outside the maps."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    areas = spatial_shapes.prod(-1)
    level_start_index = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
    levels = len(shapes)
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=generator, dtype=dtype)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=dtype)
    locations = locations * (1 + 2 * spread) - spread
    logits = torch.randn(batch, queries, heads, levels * points, generator=generator, dtype=dtype)
    weights = logits.softmax(-1).view(batch, queries, heads, levels, points)
    return value, spatial_shapes, level_start_index, locations, weights


def with_special_points(inputs: tuple[torch.Tensor, ...], pixel_centres: bool = True) -> tuple[torch.Tensor, ...]:
    """Put points exactly on the [0, 1] borders, far outside every map and (optionally) on pixel centres.

    Pixel centres are where bilinear interpolation has kinks: values must agree there, gradients are
    one-sided and legitimately depend on rounding, so gradient tests leave them out.
    """
    value, shapes, starts, locations, weights = inputs
    locations = locations.clone()
    special = [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (-5.0, 0.5), (0.5, 7.0), (-1e6, 1e6)]
    if pixel_centres:
        width, height = shapes[0, 1].item(), shapes[0, 0].item()
        special += [(0.5 / width, 0.5 / height), (1 - 0.5 / width, 0.5 / height)]
    flat = locations.view(-1, 2)
    positions = torch.linspace(0, flat.shape[0] - 1, len(special)).long()  # spread over queries/heads/levels
    for position, point in zip(positions, special):
        flat[position] = torch.tensor(point, dtype=locations.dtype)
    return value, shapes, starts, locations, weights


# --- semantics of the reference itself -------------------------------------------------------------------


def test_reference_matches_hand_computed_bilinear_samples() -> None:
    """2x2 map, one head/level/point: pixel centres read pixels, the map corner reads 1/4, outside reads 0."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)  # rows (1, 2), (3, 4)
    shapes, starts = torch.tensor([[2, 2]]), torch.tensor([0])
    points = torch.tensor([[0.25, 0.25], [0.75, 0.75], [0.5, 0.5], [0.0, 0.0], [0.5, 0.25], [1.5, 0.5]],
                          dtype=torch.float64)
    locations = points.view(1, -1, 1, 1, 1, 2)
    weights = torch.ones(1, len(points), 1, 1, 1, dtype=torch.float64)
    expected = torch.tensor([1.0, 4.0, 2.5, 0.25, 1.5, 0.0], dtype=torch.float64)
    for op in (ms_deform_attn_reference, ms_deform_attn_pytorch):
        out = op(value, shapes, starts, locations, weights)
        torch.testing.assert_close(out.view(-1), expected, rtol=0, atol=1e-12)


# --- pytorch backend vs reference ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"batch": 1, "heads": 1, "channels": 1, "shapes": ((4, 4),), "queries": 3, "points": 1},
        {"batch": 3, "heads": 2, "channels": 5, "shapes": ((6, 3), (1, 1), (2, 9), (4, 2)), "queries": 11,
         "points": 4, "spread": 2.0},
    ],
    ids=["three-levels", "single-level", "far-outside"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_pytorch_equals_reference_float64(config: dict, seed: int) -> None:
    inputs = with_special_points(make_inputs(**config, seed=seed))
    expected = ms_deform_attn_reference(*inputs)
    got = ms_deform_attn_pytorch(*inputs)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-10


# Fewer sampling points than value rows (decoder cross-attention) and many more (encoder self-attention):
# the backward scatters the value gradient differently in the two regimes.
FEW_POINTS = {"spread": 0.5, "queries": 9}
MANY_POINTS = {"batch": 1, "heads": 2, "channels": 3, "shapes": ((3, 3), (2, 1)), "queries": 40, "points": 3,
               "spread": 0.5}


@pytest.mark.parametrize("config", [FEW_POINTS, MANY_POINTS], ids=["few-points", "many-points"])
def test_pytorch_gradients_equal_reference_float64(config: dict) -> None:
    """Autograd through grid_sample vs our hand-written backward, incl. points outside and on borders."""
    inputs = with_special_points(make_inputs(**config), pixel_centres=False)
    value, shapes, starts, locations, weights = inputs
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], dtype=torch.float64)
    grads = []
    for op in (ms_deform_attn_reference, ms_deform_attn_pytorch):
        leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
        op(leaves[0], shapes, starts, leaves[1], leaves[2]).backward(grad_out)
        grads.append([leaf.grad for leaf in leaves])
    for name, expected, got in zip(("value", "locations", "weights"), *grads):
        assert (got - expected).abs().max().item() < 1e-10, name


@pytest.mark.parametrize("queries", [3, 24], ids=["few-points", "many-points"])
def test_pytorch_gradcheck_all_inputs(queries: int) -> None:
    value, shapes, starts, locations, weights = make_inputs(batch=1, heads=2, channels=2, shapes=((3, 4), (2, 2)),
                                                            queries=queries, points=2, spread=0.4)
    # exactly on the [0, 1] borders (differentiable there: the kinks are at pixel centres, not map edges)
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    locations[0, 1, 1, 1, 1] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    locations[0, 2, 0, 1, 0] = torch.tensor([-0.9, 1.7], dtype=torch.float64)  # entirely outside: zero
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]

    def op(v: torch.Tensor, loc: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ms_deform_attn_pytorch(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(op, leaves, eps=1e-6, atol=1e-7)


def test_pytorch_float32_agrees_with_reference() -> None:
    inputs = make_inputs(batch=2, heads=8, channels=32, shapes=((16, 16), (8, 8), (4, 4), (2, 2)), queries=64,
                         points=4, dtype=torch.float32, spread=0.1)
    expected = ms_deform_attn_reference(*inputs)
    got = multi_scale_deformable_attention(*inputs, backend="pytorch")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: the pytorch backend's CUDA run is checked on a GPU machine")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("config", [FEW_POINTS, MANY_POINTS, {
    "heads": 8, "channels": 32, "shapes": ((32, 24), (16, 12), (8, 6), (4, 3)), "queries": 300, "points": 4,
    "spread": 0.1}], ids=["few-points", "many-points", "r50-like"])
def test_pytorch_float32_forward_and_gradients_match_float64_reference(device: str, config: dict,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The pytorch backend in float32 on ``device`` (on CUDA: other kernels for the gathers, the sampled
    product and the scatters, other summation orders) against the float64 CPU reference, forward and all
    three input gradients.

    The reference gets the float32 inputs widened, so both sample the same points and only float32
    arithmetic separates them: errors scale with each tensor's magnitude (location gradients carry a
    factor of the map size). The worst error over 8 seeds on CPU was 0.16 of the tolerance.
    """
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # float32 means float32 here
    inputs32 = [t.float() if t.is_floating_point() else t for t in make_inputs(**config, seed=3)]
    value, shapes, starts, locations, weights = inputs32
    generator = torch.Generator().manual_seed(4)
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], generator=generator)
    results = []
    for dtype, where, op in ((torch.float64, "cpu", ms_deform_attn_reference), (torch.float32, device, None)):
        leaves = [t.to(where, dtype).requires_grad_() for t in (value, locations, weights)]
        args = (leaves[0], shapes.to(where), starts.to(where), leaves[1], leaves[2])
        out = op(*args) if op else multi_scale_deformable_attention(*args, backend="pytorch")
        out.backward(grad_out.to(where, dtype))
        assert out.device.type == where and out.dtype == dtype
        results.append([out, *(leaf.grad for leaf in leaves)])
    for name, expected, got in zip(("output", "value", "locations", "weights"), *results):
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.cpu().double(), expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0),
                                   msg=lambda message, name=name: f"{name}: {message}")


def test_non_contiguous_inputs() -> None:
    value, shapes, starts, locations, weights = make_inputs()
    expected = ms_deform_attn_pytorch(value, shapes, starts, locations, weights)
    # same values behind permuted / strided storage
    value_nc = value.permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0)
    locations_nc = torch.stack((locations[..., 0], locations[..., 1]), dim=0).movedim(0, -1)
    weights_nc = weights.transpose(1, 2).contiguous().transpose(1, 2)
    starts_nc = torch.stack((starts, starts), dim=1)[:, 0]
    assert not (value_nc.is_contiguous() or locations_nc.is_contiguous() or weights_nc.is_contiguous())
    leaves = [t.clone().requires_grad_() for t in (value_nc, locations_nc, weights_nc)]
    got = ms_deform_attn_pytorch(leaves[0], shapes, starts_nc, leaves[1], leaves[2])
    assert (got - expected).abs().max().item() < 1e-12
    grad = torch.randn_like(got).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous gradient too
    got.backward(grad)
    assert all(leaf.grad is not None and torch.isfinite(leaf.grad).all() for leaf in leaves)


@pytest.mark.parametrize("empty", ["queries", "batch", "points"])
def test_empty_inputs(empty: str) -> None:
    sizes = {"queries": {"queries": 0}, "batch": {"batch": 0}, "points": {"points": 0}}[empty]
    value, shapes, starts, locations, weights = make_inputs(**sizes)
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = multi_scale_deformable_attention(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert out.shape == (value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])
    assert not out.abs().sum()
    (out.sum() + leaves[0].sum()).backward()  # graph stays usable
    assert torch.equal(leaves[0].grad, torch.ones_like(value))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    inputs = make_inputs(dtype=torch.float32)
    expected = ms_deform_attn_reference(*inputs)
    value, shapes, starts, locations, weights = inputs
    got = multi_scale_deformable_attention(value.to(dtype), shapes, starts, locations.to(dtype), weights)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)


def test_shape_mismatch_is_a_clear_value_error() -> None:
    value, shapes, starts, locations, weights = make_inputs()
    with pytest.raises(ValueError, match="attention_weights"):
        multi_scale_deformable_attention(value, shapes, starts, locations, weights[..., :-1])
    with pytest.raises(ValueError, match="spatial_shapes"):
        multi_scale_deformable_attention(value, shapes[:-1], starts[:-1], locations, weights)


# --- dispatch -----------------------------------------------------------------------------------------------


def test_auto_runs_pytorch_on_cpu() -> None:
    inputs = make_inputs()
    assert resolve_backend("auto", torch.device("cpu")) == "pytorch"
    assert torch.equal(multi_scale_deformable_attention(*inputs), ms_deform_attn_pytorch(*inputs))


def test_mmcv_on_cpu_raises_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailableError, match="mmcv"):
        multi_scale_deformable_attention(*make_inputs(), backend="mmcv")


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown MSDA backend"):
        multi_scale_deformable_attention(*make_inputs(), backend="cuda")
    with pytest.raises(ValueError, match="unknown MSDA backend"):
        MSDeformAttn(32, 2, 4, 2, backend="triton")


@pytest.fixture
def fake_mmcv(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, ...]]:
    """An importable stand-in for mmcv's op (the reference); records the tensors it is called with."""
    calls: list[tuple[torch.Tensor, ...]] = []

    class FakeFunction:
        @staticmethod
        def apply(value, shapes, starts, locations, weights, im2col_step):  # mmcv's argument order
            calls.append((value, shapes, starts, locations, weights, im2col_step))
            return ms_deform_attn_reference(value, shapes, starts, locations, weights)

    module = types.ModuleType("mmcv.ops.multi_scale_deform_attn")
    module.MultiScaleDeformableAttnFunction = FakeFunction
    for name in ("mmcv", "mmcv.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mmcv.ops.multi_scale_deform_attn", module)
    mmcv_backend._load.cache_clear()
    yield calls
    mmcv_backend._load.cache_clear()


def test_mmcv_is_detected_at_use_and_still_cuda_only(fake_mmcv: list) -> None:
    assert mmcv_backend.mmcv_unavailable_reason() is None
    assert resolve_backend("auto", torch.device("cpu")) == "pytorch"
    assert resolve_backend("mmcv", torch.device("cuda")) == "mmcv"
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        resolve_backend("mmcv", torch.device("cpu"))


def test_mmcv_adapter_casts_half_to_float32(fake_mmcv: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel gets float32 and mmcv's argument order; the caller gets its own dtype back."""
    import detr_ssl.models.msda.dispatch as dispatch

    monkeypatch.setattr(dispatch, "resolve_backend", lambda backend, device: "mmcv")  # pretend we are on CUDA
    value, shapes, starts, locations, weights = make_inputs(batch=6, dtype=torch.float32)
    out = multi_scale_deformable_attention(value.half(), shapes, starts, locations.half(), weights.half())
    (got_value, _, _, got_locations, got_weights, step), = fake_mmcv
    assert {got_value.dtype, got_locations.dtype, got_weights.dtype} == {torch.float32}
    assert step == 6 and out.dtype == torch.float16
    assert mmcv_backend._im2col_step(96) == 48  # largest divisor <= 64


def test_mmcv_missing_raises_at_use_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mmcv", None)  # makes `import mmcv...` fail
    mmcv_backend._load.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match="does not import"):
            resolve_backend("mmcv", torch.device("cuda"))
        assert resolve_backend("auto", torch.device("cuda")) == "pytorch"
    finally:
        mmcv_backend._load.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mmcv_matches_pytorch_on_cuda() -> None:
    reason = mmcv_backend.mmcv_unavailable_reason()
    if reason is not None:
        pytest.skip(f"mmcv's MSDA op is not importable: {reason}")
    inputs = [t.cuda() for t in make_inputs(batch=2, heads=8, channels=32, shapes=((16, 16), (8, 8), (4, 4)),
                                            queries=50, points=4, dtype=torch.float32, spread=0.2)]
    value, shapes, starts, locations, weights = inputs
    grad_out = torch.randn(2, 50, 256, device="cuda")
    results = []
    for backend in ("mmcv", "pytorch"):
        leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
        out = multi_scale_deformable_attention(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        out.backward(grad_out)
        results.append([out, *(leaf.grad for leaf in leaves)])
    for name, got, expected in zip(("output", "value", "locations", "weights"), *results):
        assert (got - expected).abs().max().item() < 1e-4, name


# --- the layer ------------------------------------------------------------------------------------------------


def layer_inputs(d_model: int = 32, batch: int = 2, queries: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3]])
    areas = shapes.prod(-1)
    return {
        "query": torch.randn(batch, queries, d_model, generator=generator),
        "reference_points": torch.rand(batch, queries, 2, 2, generator=generator),
        "input_flatten": torch.randn(batch, int(areas.sum()), d_model, generator=generator),
        "input_spatial_shapes": shapes,
        "input_level_start_index": torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1])),
    }


def randomised_layer(seed: int = 0) -> MSDeformAttn:
    """The layer with non-trivial offsets/weights (the init makes attention uniform and offsets constant)."""
    torch.manual_seed(seed)
    layer = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3, backend="pytorch")
    with torch.no_grad():
        for linear in (layer.sampling_offsets, layer.attention_weights):
            linear.weight.normal_(0, 0.1)
    return layer


def test_layer_shapes_and_init() -> None:
    layer = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    assert layer(**layer_inputs()).shape == (2, 5, 32)
    bias = layer.sampling_offsets.bias.view(4, 2, 3, 2)  # (heads, levels, points, xy)
    torch.testing.assert_close(bias[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))  # head 0: +x
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)  # head 1: +y
    assert not layer.sampling_offsets.weight.any() and not layer.attention_weights.weight.any()
    assert not layer.attention_weights.bias.any()
    assert {name for name, _ in layer.named_parameters() if "sampling_offsets" in name} == {
        "sampling_offsets.weight", "sampling_offsets.bias"}


def test_layer_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=8)
    layer = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    inputs = layer_inputs()
    inputs["reference_points"] = torch.rand(2, 5, 2, 3)
    with pytest.raises(ValueError, match="reference_points"):
        layer(**inputs)


def test_layer_padding_mask_removes_masked_pixels() -> None:
    layer = randomised_layer()
    inputs = layer_inputs()
    mask = torch.zeros(2, inputs["input_flatten"].shape[1], dtype=torch.bool)
    mask[0, 10:25] = True
    mask[1, 30:] = True
    out = layer(**inputs, input_padding_mask=mask)
    changed = dict(inputs)
    changed["input_flatten"] = inputs["input_flatten"].masked_fill(mask[..., None], 1e3)
    torch.testing.assert_close(layer(**changed, input_padding_mask=mask), out)
    assert not torch.allclose(layer(**changed), out)  # ...while without the mask they matter


def test_layer_box_reference_points() -> None:
    """4-d references: offsets are scaled by half the box size per point; a zero-size box samples its centre."""
    layer = randomised_layer()
    inputs = layer_inputs()
    centres = inputs["reference_points"]
    boxes = torch.cat((centres, torch.full_like(centres, 0.2)), dim=-1)
    out = layer(**{**inputs, "reference_points": boxes})

    n, queries, _ = inputs["query"].shape
    offsets = layer.sampling_offsets(inputs["query"]).view(n, queries, 4, 2, 3, 2)
    weights = layer.attention_weights(inputs["query"]).view(n, queries, 4, 6).softmax(-1).view(n, queries, 4, 2, 3)
    locations = centres[:, :, None, :, None] + offsets / 3 * 0.2 * 0.5
    value = layer.value_proj(inputs["input_flatten"]).view(n, -1, 4, 8)
    expected = layer.output_proj(ms_deform_attn_reference(
        value, inputs["input_spatial_shapes"], inputs["input_level_start_index"], locations, weights))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    zero_size = torch.cat((centres, torch.zeros_like(centres)), dim=-1)
    point_like = layer(**{**inputs, "reference_points": zero_size})
    with torch.no_grad():
        layer.sampling_offsets.weight.zero_()
        layer.sampling_offsets.bias.zero_()
    torch.testing.assert_close(point_like, layer(**inputs), rtol=1e-5, atol=1e-5)


def test_layer_point_reference_offsets_are_in_pixels() -> None:
    """2-d references: an offset of (1, 0) moves one pixel of that level."""
    layer = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3, backend="pytorch")
    inputs = layer_inputs()
    n, queries, _ = inputs["query"].shape
    with torch.no_grad():
        layer.sampling_offsets.bias.zero_()
        layer.sampling_offsets.bias.view(4, 2, 3, 2)[:, :, :, 0] = 1.0
    shapes = inputs["input_spatial_shapes"]
    shifted = inputs["reference_points"] + torch.stack((1.0 / shapes[:, 1], torch.zeros(2)), dim=-1)
    with torch.no_grad():
        layer.sampling_offsets.bias.zero_()
        expected = layer(**{**inputs, "reference_points": shifted})
        layer.sampling_offsets.bias.view(4, 2, 3, 2)[:, :, :, 0] = 1.0
        got = layer(**inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_layer_trains_every_projection() -> None:
    layer = randomised_layer()
    layer(**layer_inputs()).square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
