"""Measurement tools shared by the ``scripts/bench_*.py`` benchmarks.

- :func:`time_interleaved`: wall times of several methods, interleaved run by run so that background load
  on a shared machine hits all of them alike, plus the share of the machine other processes used meanwhile.
- :func:`peak_rss_in_fresh_process`: the extra resident memory one call needs at its worst moment, measured
  in a fresh subprocess so that no earlier run has left freed pages or a high-water mark behind. After the
  setup (and a tiny op, so OpenMP threads exist) the child returns free heap pages to the OS
  (``malloc_trim``), resets the kernel's resident-set high-water mark (writing 5 to
  ``/proc/self/clear_refs``) and reads its resident set as the baseline; after the call, ``VmHWM`` minus
  that baseline is the peak: intermediates, tensors saved for backward, gradients, optimizer state, slack.

What every benchmark's JSON records, and its argument parser, are in :mod:`detr_ssl.bench_cli` (no torch).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detr_ssl.bench_cli import background_load, cpu_times


def sync(device: torch.device) -> None:
    """Waits for queued CUDA work (a no-op on CPU), so wall times cover the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def time_interleaved(calls: dict[str, Callable[[], object]], warmup: int, repeats: int,
                     device: torch.device = CPU) -> tuple[dict[str, list[float]], float | None]:
    """Milliseconds per run of each call (``repeats`` each after ``warmup`` untimed runs), interleaved run
    by run; and the share of the machine's CPU time other processes used meanwhile (None off Linux).

    Each round runs the calls in a new (seeded) random order: a call of a few hundred microseconds runs
    measurably slower right after some peers (their work leaves the caches cold), and a fixed order
    charged that to the same call every time."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    order, shuffler = list(calls.items()), random.Random(0)
    before = cpu_times()
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name, call in order:
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times, background_load(before, cpu_times())


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _peak_child(setup: Callable[..., Callable[[], object]], args: tuple, threads: int, calls: int) -> float | None:
    torch.set_num_threads(threads)
    call = setup(*args)
    torch.ones(1 << 20).mul_(2)  # start the thread pool before the baseline
    ctypes.CDLL(None).malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    baseline = _status_mb("VmRSS")
    for _ in range(calls):
        call()
    return _status_mb("VmHWM") - baseline


def peak_rss_in_fresh_process(setup: Callable[..., Callable[[], object]], *args: Any, threads: int | None = None,
                              calls: int = 1) -> float | None:
    """Extra peak resident MiB of ``calls`` runs of ``setup(*args)()`` in a fresh process (see the module
    docstring); None off Linux. ``setup`` must be importable (a module-level function) and builds
    everything the call needs, so that building is not counted."""
    if not sys.platform.startswith("linux"):
        return None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_peak_child, setup, args, threads or torch.get_num_threads(), calls).result()


def synthetic_detection_batch(batch_size: int, height: int, width: int, num_classes: int, boxes_per_image: int,
                              seed: int, pad_last: bool = False) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """Random images ``(B, 3, H, W)``, their padding mask and ``boxes_per_image`` random targets per image
    (labels, normalised cxcywh boxes). With ``pad_last`` the last image's right and bottom quarters are
    padding (zeros, True in the mask), as in a real batch of differently sized images."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    mask = torch.zeros(batch_size, height, width, dtype=torch.bool)
    if pad_last:
        mask[-1, :, width * 3 // 4:] = True
        mask[-1, height * 3 // 4:] = True
        images[mask[:, None].expand_as(images)] = 0
    targets = []
    for _ in range(batch_size):
        centres = 0.2 + 0.6 * torch.rand(boxes_per_image, 2, generator=generator)
        sides = 0.05 + 0.3 * torch.rand(boxes_per_image, 2, generator=generator)
        labels = torch.randint(num_classes, (boxes_per_image,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat((centres, sides), dim=1)})
    return images, mask, targets


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """What the training loop does with a step's loss: backward, gradient clipping at ``max_norm`` (none
    when 0), the optimizer step, gradients cleared."""
    loss.backward()
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def synthetic_coco_predictions(num_images: int, seed: int = 0, num_classes: int = 5, side: int = 200,
                               ) -> tuple[dict[str, list[dict[str, Any]]], dict[int, dict[str, torch.Tensor]]]:
    """A COCO ground truth of ``num_images`` images and detections for them that score neither 0 nor 1.

    Every tenth image has no annotation, every seventh annotation is a crowd box, and every eleventh image
    gets no detection; the detections are the ground-truth boxes jittered (some with the wrong class) plus
    random boxes, up to 100 per image: what COCO evaluation meets in practice, crowd and empty cases included.
    """
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": side, "height": side, "file_name": f"{i}.jpg"} for i in range(1, num_images + 1)]
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, num_classes + 1)]
    annotations, detections = [], {}
    for image in images:
        count = 0 if image["id"] % 10 == 0 else int(rng.integers(1, 8))
        xy = rng.uniform(0, side * 0.7, (count, 2))
        wh = rng.uniform(4, side * 0.3, (count, 2))
        labels = rng.integers(0, num_classes, count)
        for box_xy, box_wh, label in zip(xy, wh, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": int(label) + 1,
                                "bbox": [*box_xy.tolist(), *box_wh.tolist()], "area": float(box_wh.prod()),
                                "iscrowd": int((len(annotations) + 1) % 7 == 0)})
        if image["id"] % 11 == 0:
            continue
        extra = int(rng.integers(5, 100 - count + 1))
        jittered = np.concatenate([xy, xy + wh], axis=1) + rng.normal(0, 3, (count, 4))
        corners = rng.uniform(0, side * 0.7, (extra, 2))
        random = np.concatenate([corners, corners + rng.uniform(4, side * 0.3, (extra, 2))], axis=1)
        wrong = rng.random(count) < 0.2
        detections[image["id"]] = {
            "boxes": torch.as_tensor(np.concatenate([jittered, random]), dtype=torch.float32),
            "labels": torch.as_tensor(np.concatenate([np.where(wrong, (labels + 1) % num_classes, labels),
                                                      rng.integers(0, num_classes, extra)]), dtype=torch.int64),
            "scores": torch.as_tensor(rng.uniform(0.01, 0.99, count + extra), dtype=torch.float32),
        }
    return {"images": images, "categories": categories, "annotations": annotations}, detections

