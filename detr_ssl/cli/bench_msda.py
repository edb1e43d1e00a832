"""The measurement code of ``scripts/bench_msda.py`` (what it measures, and how, is in its docstring): the
deformable attention op of each backend against the per-level ``grid_sample`` reference."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from detr_ssl.bench_cli import BenchRun
from detr_ssl.benchmarking import peak_rss_in_fresh_process, time_interleaved
from detr_ssl.models.msda import ms_deform_attn_reference, multi_scale_deformable_attention
from detr_ssl.models.msda.mmcv_backend import mmcv_unavailable_reason

BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4
OFFSET_PIXELS = 2.0
MODES = ("fwd", "fwd+bwd")
#: Level shapes ((H, W) per level) and queries (None: every pixel of every level is a query).
Case = tuple[Sequence[Sequence[int]], int | None]


def make_inputs(case: Case, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights (float32) for ``case``."""
    shapes, queries = case
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    areas = spatial_shapes.prod(-1)
    level_start_index = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
    levels = len(shapes)
    if queries is None:  # encoder: the pixel centres of every level
        centres = []
        for height, width in shapes:
            ys, xs = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                                    indexing="ij")
            centres.append(torch.stack((xs, ys), dim=-1).view(-1, 2))
        reference = torch.cat(centres).expand(BATCH, -1, -1)
    else:
        reference = torch.rand(BATCH, queries, 2, generator=generator)
    queries = reference.shape[1]
    pixel = 1.0 / spatial_shapes.flip(-1).float()  # (L, 2): one pixel of each level, normalised
    offsets = torch.randn(BATCH, queries, HEADS, levels, POINTS, 2, generator=generator) * OFFSET_PIXELS
    locations = reference[:, :, None, None, None, :] + offsets * pixel[:, None, :]
    weights = torch.randn(BATCH, queries, HEADS, levels * POINTS, generator=generator).softmax(-1)
    value = torch.randn(BATCH, int(areas.sum()), HEADS, CHANNELS, generator=generator)
    tensors = (value, spatial_shapes, level_start_index, locations,
               weights.view(BATCH, queries, HEADS, levels, POINTS))
    return tuple(t.to(device) for t in tensors)


def methods(device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    """Name -> op with the reference's signature."""
    found: dict[str, Callable[..., torch.Tensor]] = {
        "reference": ms_deform_attn_reference,
        "pytorch": lambda *args: multi_scale_deformable_attention(*args, backend="pytorch"),
    }
    if device.type == "cuda" and mmcv_unavailable_reason() is None:
        found["mmcv"] = lambda *args: multi_scale_deformable_attention(*args, backend="mmcv")
    return found


def make_call(op: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], mode: str) -> Callable[[], None]:
    """A closure running ``op`` once in ``mode``; for fwd+bwd the float inputs are leaves needing grad."""
    value, shapes, starts, locations, weights = inputs
    if mode == "fwd":
        def forward() -> None:
            with torch.no_grad():
                op(value, shapes, starts, locations, weights)
        return forward

    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                           device=value.device, generator=torch.Generator(value.device).manual_seed(1))

    def forward_backward() -> None:
        for leaf in leaves:
            leaf.grad = None
        op(leaves[0], shapes, starts, leaves[1], leaves[2]).backward(grad_out)
    return forward_backward


def _peak_setup(case: Case, method: str, mode: str, seed: int) -> Callable[[], None]:
    device = torch.device("cpu")
    return make_call(methods(device)[method], make_inputs(case, device, seed), mode)


def cuda_peak_mb(call: Callable[[], None], device: torch.device) -> float:
    """Peak CUDA memory (MiB) allocated by one ``call`` beyond what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


@dataclass
class Result:
    """One (case, mode, method): the median time in ms, peak memory in MiB, ratios against the reference."""

    case: str
    queries: int
    mode: str
    method: str
    median_ms: float
    peak_mb: float | None
    speedup_vs_reference: float | None = None
    memory_vs_reference: float | None = None


def run(cases: dict[str, Case], device: torch.device, warmup: int, repeats: int, memory: bool, seed: int,
        bench: BenchRun) -> list[Result]:
    """Times (recorded in ``bench`` as "<case> <mode>") and, unless ``memory`` is False, the peak memory of
    every method on every case and mode."""
    results: list[Result] = []
    for case, spec in cases.items():
        inputs = make_inputs(spec, device, seed)
        for mode in MODES:
            calls = {name: make_call(op, inputs, mode) for name, op in methods(device).items()}
            times, load = time_interleaved(calls, warmup, repeats, device)
            bench.record(f"{case} {mode}", times, load)
            for name, call in calls.items():
                if not memory:
                    peak = None
                elif device.type == "cuda":
                    peak = cuda_peak_mb(call, device)
                else:
                    peak = peak_rss_in_fresh_process(_peak_setup, spec, name, mode, seed)
                results.append(Result(case, inputs[3].shape[1], mode, name, statistics.median(times[name]), peak))
            reference = results[-len(calls)]
            for result in results[-len(calls):]:
                result.speedup_vs_reference = reference.median_ms / result.median_ms
                if result.peak_mb is not None and reference.peak_mb:
                    result.memory_vs_reference = result.peak_mb / reference.peak_mb
            print(f"  done {case} {mode}", file=sys.stderr, flush=True)
    return results
