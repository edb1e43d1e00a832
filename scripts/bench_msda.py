"""Benchmark multi-scale deformable attention: our ``pytorch`` backend vs the per-level grid_sample reference.

Prints a table and writes ``bench_results/msda.json``. On CUDA, mmcv's kernel is added when it imports.

Shapes are Deformable DETR's: batch 2, 8 heads x 32 channels, 4 levels, 4 points per head and level.
``decoder``: 300 queries into levels 64x64..8x8 (5,440 pixels). ``encoder``: every pixel of those levels
is a query (5,440). ``--large`` adds ``encoder-large``: levels 128x128..16x16 (21,760 queries). Sampling
locations look like a trained layer's: each query's reference point (a random point for the decoder, the
query's own pixel centre for the encoder) plus offsets of about two pixels of each level, so a few
percent of the taps fall outside the maps.

What is measured, and how:

- Time: median wall time over ``--repeats`` runs after ``--warmup`` runs; ``fwd`` is the forward call,
  ``fwd+bwd`` also back-propagates a fixed random output gradient to value, locations and weights. The
  methods are interleaved run by run, so background load on a shared machine hits all of them alike.
- Peak memory on CPU: the extra resident memory one call needs at its worst moment, measured in a fresh
  subprocess per (case, method, mode) by :func:`detr_ssl.benchmarking.peak_rss_in_fresh_process`
  (Linux only; elsewhere the column reads n/a).
- Background load: the share of the machine's CPU time used by *other* processes while a case was timed
  (from ``/proc/stat`` minus this process's CPU time). On a shared machine many small parallel ops suffer
  more than a few big ones (each waits for a descheduled thread), so read ratios taken under load with care.
- Peak memory on CUDA: ``torch.cuda.max_memory_allocated`` during the call minus what was allocated before.

Example: ``python scripts/bench_msda.py --threads 2`` (about a minute on 2 cores; ``--large`` a few more).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from detr_ssl.models.msda import ms_deform_attn_reference, multi_scale_deformable_attention
from detr_ssl.models.msda.mmcv_backend import mmcv_unavailable_reason

from detr_ssl.benchmarking import peak_rss_in_fresh_process, time_interleaved, write_json

BATCH, HEADS, CHANNELS, POINTS = 2, 8, 32, 4
OFFSET_PIXELS = 2.0
CASES: dict[str, tuple[tuple[tuple[int, int], ...], int | None]] = {
    # name: (level shapes, queries; None = every pixel is a query)
    "decoder": (((64, 64), (32, 32), (16, 16), (8, 8)), 300),
    "encoder": (((64, 64), (32, 32), (16, 16), (8, 8)), None),
    "encoder-large": (((128, 128), (64, 64), (32, 32), (16, 16)), None),
}
MODES = ("fwd", "fwd+bwd")


def make_inputs(case: str, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights (float32) for ``case``."""
    shapes, queries = CASES[case]
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


def _peak_setup(case: str, method: str, mode: str, seed: int) -> Callable[[], None]:
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
    """One (case, mode, method): times in ms, peak memory in MiB, ratios against the reference."""

    case: str
    queries: int
    mode: str
    method: str
    median_ms: float
    times_ms: list[float]
    peak_mb: float | None
    background_load: float | None
    speedup_vs_reference: float | None = None
    memory_vs_reference: float | None = None


def run(cases: list[str], device: torch.device, warmup: int, repeats: int, memory: bool, seed: int) -> list[Result]:
    """Times (and unless ``memory`` is False, peak memory of) every method on every case and mode."""
    results: list[Result] = []
    for case in cases:
        inputs = make_inputs(case, device, seed)
        for mode in MODES:
            calls = {name: make_call(op, inputs, mode) for name, op in methods(device).items()}
            times, load = time_interleaved(calls, warmup, repeats, device)
            for name in calls:
                if not memory:
                    peak = None
                elif device.type == "cuda":
                    peak = cuda_peak_mb(calls[name], device)
                else:
                    peak = peak_rss_in_fresh_process(_peak_setup, case, name, mode, seed)
                results.append(Result(case, inputs[3].shape[1], mode, name, statistics.median(times[name]),
                                      times[name], peak, load))
            reference = results[-len(calls)]
            for result in results[-len(calls):]:
                result.speedup_vs_reference = reference.median_ms / result.median_ms
                if result.peak_mb is not None and reference.peak_mb:
                    result.memory_vs_reference = result.peak_mb / reference.peak_mb
            print(f"  done {case} {mode}", file=sys.stderr, flush=True)
    return results


def format_table(results: list[Result]) -> str:
    """Fixed-width text table of ``results``."""
    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    header = (f"{'case':<14} {'queries':>7} {'mode':<8} {'method':<10} {'median ms':>10} {'speedup':>8} "
              f"{'peak MB':>8} {'mem ratio':>9} {'bg load':>8}")
    lines = [header, "-" * len(header)]
    for r in results:
        ratio = "" if r.memory_vs_reference is None else f"{r.memory_vs_reference:.2f}"
        load = "n/a" if r.background_load is None else f"{r.background_load:.0%}"
        lines.append(f"{r.case:<14} {r.queries:>7} {r.mode:<8} {r.method:<10} {r.median_ms:>10.1f} "
                     f"{r.speedup_vs_reference:>7.2f}x {mb(r.peak_mb):>8} {ratio:>9} {load:>8}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Timing and memory methods are described in the module docstring.")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=["decoder", "encoder"],
                        help="which shapes to run (default: decoder encoder)")
    parser.add_argument("--large", action="store_true", help="also run encoder-large (levels 128..16, 21,760 queries)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per method (median reported; default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per method first (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the timings and memory runs (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--output", type=Path, default=Path("bench_results/msda.json"),
                        help="JSON file to write (default bench_results/msda.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cases = args.cases + (["encoder-large"] if args.large and "encoder-large" not in args.cases else [])
    results = run(cases, torch.device(args.device), args.warmup, args.repeats, not args.no_memory, args.seed)
    print(format_table(results))
    environment = {
        "torch": torch.__version__,
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "mmcv": mmcv_unavailable_reason() or "available",
        "shapes": {"batch": BATCH, "heads": HEADS, "channels": CHANNELS, "points": POINTS,
                   "offset_pixels": OFFSET_PIXELS},
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    write_json(args.output, {"environment": environment, "results": [asdict(r) for r in results]})


if __name__ == "__main__":
    main()
