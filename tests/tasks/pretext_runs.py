"""The short pretraining run of each backbone pretext that tests check (its loss falls, its exports load):
one config per task, so tests/tasks/test_backbone_pretext.py and the task's own file can share one run
(tests/tasks/conftest.py's ``short_pretext_run``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from detr_ssl.config import PretrainConfig
from detr_ssl.tasks import get_task

#: Per task, its options changed for an 8-image run: queues no longer than a batch (their negatives are real
#: embeddings after the first step), SwAV's batch of 8 partitioned equally over fewer clusters.
SHORT_OPTIONS: dict[str, dict[str, object]] = {
    "densecl": {"queue_length": 8},
    "swav": {"num_prototypes": 4},
    "regioncl": {"queue_length": 8},
    # SCFS: no teacher-temperature warm-up (a warming teacher raises its targets' entropy, and the loss) and a
    # faster teacher, so 30 steps show the fall.
    "scfs": {"warmup_teacher_temperature_epochs": 0, "momentum": 0.9},
    # MCL's released T = 1 keeps the logits within [-1, 1]: 8 photos' loss moves by about 1% in a short run.
    "mcl": {"temperature": 0.2},
    "detco": {"queue_length": 8},
    # CCOP: no dropout, an image queue of one batch and an object queue of a few steps' boxes.
    "ccop": {"image_queue_length": 8, "roi_queue_length": 64, "head_dropout": 0.0},
}
#: Per task, milder views where the released ones leave the loss near chance for a short run on 8 photos
#: (MoCo terms: RegionCL's instance term, DetCo's, CCOP's image term): large crops, no colour jitter.
SHORT_CROPS: dict[str, dict[str, object]] = {"regioncl": {"global_scale": (0.8, 1.0), "color_strength": 0.0},
                                             "mcl": {"global_scale": (0.8, 1.0)},
                                             "detco": {"global_scale": (0.8, 1.0), "color_strength": 0.0},
                                             "ccop": {"global_scale": (0.8, 1.0)}}
#: Steps (one epoch of the 8 photos each) where a task's loss falls clearly in fewer than the default.
SHORT_STEPS: dict[str, int] = {"pixpro": 16}
DEFAULT_STEPS = 30


@dataclass(frozen=True)
class PretextRun:
    """A finished short run: its config, its output folder and the exported ``pretrained.pth``.
    Shared between tests: read it, never write into ``output_dir``."""

    task: str
    cfg: PretrainConfig
    output_dir: Path
    exported: Path


ShortRun = Callable[[str], PretextRun]
"""The type of the ``short_pretext_run`` fixture: ``short_pretext_run(task)`` -> that task's finished run."""


def short_run_config(task: str, images: Path, output_dir: Path) -> PretrainConfig:
    """The demo preset of ``task`` on ``images``: 64 px global views (ResNet-18 keeps a 2x2 map for the dense
    pretexts' matching), at most 2 local views of 32 px, batch 8, one logged step per batch."""
    base = get_task(task).preset_config("demo")
    return replace(
        base, data=replace(base.data, data=images),
        crops=replace(base.crops, global_size=64, local_size=32, num_local=min(base.crops.num_local, 2),
                      **SHORT_CROPS.get(task, {})),
        optim=replace(base.optim, epochs=SHORT_STEPS.get(task, DEFAULT_STEPS), batch_size=8, lr=1e-3, lr_drop=1000),
        run=replace(base.run, output_dir=output_dir, log_every=1, checkpoint_every=1000),
        **({task: replace(getattr(base, task), **SHORT_OPTIONS[task])} if task in SHORT_OPTIONS else {}),
    )
