#!/usr/bin/env python
"""Benchmark one DetReg pretraining step, split into its phases; target: teacher crop path <= 25% of the step
with the paper preset, <= 40% with the demo preset (whose tiny detector makes any teacher a larger share).

Prints a table per model size and writes ``--output`` (default ``bench_results/pretrain_step.json``).

Set-up, as ``scripts/pretrain.py --task detreg`` builds it (`detr_ssl.cli.pretrain.pretrain`): the config
comes from `parse_pretrain_args` (``--preset``, ``--model-size``), the model, frozen teacher and proposal
dataset from `DetRegTask`, the optimiser from `build_optimizer`. Images: the first ``--num-images`` demo
photos (``demo_unlabeled_images()``, real photos of up to 256 px), copied into a temporary folder whose
proposal cache is filled first with `detr_ssl.proposals.precompute` (the run then requires the cache, as
a real run with ``--require-cache`` would). Batches are the dataset's augmented samples, collated.

Phases of one step, each timed with the library functions `DetRegTask.compute_loss` calls, in its order:

- ``proposals``: the batch's proposal boxes read from the cache (`ProposalProvider.boxes` per image, as
  the dataset does after decoding an image; normally inside a DataLoader worker, which also cuts the
  teacher crops out of the image, before augmentation, as released);
- ``crops``: `DetRegTask.teacher_inputs`: the crops to float, the released per-crop augmentation (jitter,
  greyscale, blur, batched), normalisation;
- ``teacher``: the frozen teacher embedding every crop (one forward);
- ``model forward``: the detector plus embedding head;
- ``loss``: the set criterion (Hungarian matching + terms) and the embedding L1 (`detreg_loss`);
- ``backward + step``: back-propagation, gradient clipping, the AdamW step.

The *teacher crop path* is ``crops + teacher``; shares are of the sum of all phases. The peer, timed in
the same run interleaved run by run, is the unsplit step (``task.compute_loss`` + backward + step): the
phased step must give the same loss (checked) and take about as long (``phases / unsplit``).
Time: median over ``--repeats`` steps after ``--warmup``, cycling through ``--batches`` batches.
``bg load`` is the share of the machine other processes used meanwhile.

Example: ``python scripts/bench_pretrain_step.py`` (a minute or two on 2 cores);
``--model-size tiny r50`` adds the ResNet-50 model (a few minutes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detr_ssl.bench_cli import BenchRun, bench_parser, markdown_table, percent, positive_int

NAME = "pretrain_step"
#: Background load (share of the machine used by other processes) above which the table carries a warning.
NOTE_LOAD = 0.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(NAME, __doc__, repeats=6, warmup=1, device=True)
    parser.add_argument("--model-size", nargs="+", choices=("tiny", "r50"), default=["tiny"],
                        help="model presets to run (default: tiny; r50 takes a few minutes)")
    parser.add_argument("--preset", choices=("demo", "paper"), default="demo",
                        help="pretraining preset: image sizes, batch size, learning rates (default demo: "
                             "short side 96-128)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="images per step (default: the preset's)")
    parser.add_argument("--crop-size", type=positive_int, default=None,
                        help="side of the teacher's crops (default: the preset's)")
    parser.add_argument("--num-images", type=positive_int, default=16,
                        help="demo photos to use (at most 32; default 16)")
    parser.add_argument("--batches", type=positive_int, default=4,
                        help="distinct batches the steps cycle through (default 4)")
    return parser.parse_args(argv)


def readme_table(payload: dict[str, Any]) -> str:
    """Per model size: a title line (batch, crops, teacher), then each phase's median time and share, the
    teacher crop path, and the unsplit step (the peer)."""
    return "\n\n".join(_size_table(size, result, payload) for size, result in payload["results"].items())


def _size_table(size: str, result: dict[str, Any], payload: dict[str, Any]) -> str:
    phases, shares = result["phase_ms"], result["phase_share"]
    crop_path = result["teacher_crop_path"]
    rows = [[phase + (" *" if phase in crop_path else ""), f"{phases[phase]:.1f}", f"{shares[phase]:.0%}"]
            for phase in phases]
    rows.append([f"**teacher crop path** ({' + '.join(crop_path)})", f"{result['teacher_crop_path_ms']:.1f}",
                 f"**{result['teacher_crop_path_share']:.0%}** (target <= {result['target_share']:.0%})"])
    rows.append(["sum of phases", f"{result['phases_sum_ms']:.1f}", "100%"])
    rows.append(["peer: unsplit step (compute_loss + backward + step)", f"{result['unsplit_step_ms']:.1f}",
                 f"phases / unsplit = {result['phases_vs_unsplit']:.2f}"])
    load = payload["background_load"][size]
    title = (f"{payload['args']['preset']} preset, {size} ({result['backbone']}): batch {result['batch_size']}, "
             f"{result['crops_per_step']:.0f} crops of {result['crop_size']} px = "
             f"{result['teacher_vs_detector_pixels']:.1f}x the detector's pixels, teacher {result['teacher_dim']}-d, "
             f"bg load {percent(load)}")
    note = ""
    if load is not None and load > NOTE_LOAD:
        note = (f"\n\nNote: other processes used {load:.0%} of the CPU meanwhile, which inflates the times"
                + (" (multi-threaded ops most: each waits for its descheduled threads; try --threads 1)."
                   if payload["machine"]["threads"] > 1 else "."))
    return title + "\n\n" + markdown_table(["phase", "median ms", "share of step"], rows) + note


def readme_summary(payload: dict[str, Any]) -> tuple[str, str, str]:
    reached = "; ".join(f"{payload['args']['preset']} preset, {size}: {r['teacher_crop_path_share']:.0%}"
                        for size, r in payload["results"].items())
    target = max(r["target_share"] for r in payload["results"].values())
    return "the unsplit DetReg step", f"teacher crop path <= {target:.0%} of a step", reached


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = BenchRun(NAME, args, argv)
    from detr_ssl.cli.bench_pretrain_step import bench_sizes

    print(readme_table(run.write(bench_sizes(args, run), libraries=("opencv-contrib-python-headless",),
                                 device=args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
