"""Two CPU processes under Accelerate train like one process with the same global batch, resume exactly,
and agree on skipping a batch that is non-finite on only one of them.

The training runs start two real processes as users launch them (tests/launch.py: ``accelerate launch
--multi_gpu`` with the scripts' ``--cpu``, Accelerate's MULTI_CPU mode over gloo); the NaN test forks its
two (tests/launch.py's ``run_main_in_two_processes``). Each checks that there were two.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import entries
import pytest
import torch
from launch import FORKED_GLOO, TWO_CPU_PROCESSES, free_port, run_main_in_two_processes

from detr_ssl.datasets.demo import DemoPaths
from detr_ssl.engine.checkpoint import load_training_checkpoint

REPO = Path(__file__).resolve().parents[2]
FINETUNE = str(REPO / "scripts" / "finetune.py")
#: One thread per process: the runs compared here must not differ by their thread count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.slow


def _two_processes(args: Sequence[str]) -> list[str]:
    """``accelerate launch`` of two CPU processes (tests/launch.py), on a port of their own: these tests
    start two launches at once."""
    return [*TWO_CPU_PROCESSES, "--main_process_port", str(free_port()), *args]


def _run_all(commands: list[list[str]], cwd: Path) -> list[str]:
    """Runs the commands concurrently; fails with the end of the output of any that failed. Returns each
    command's output (stdout and stderr together)."""
    processes = [subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for command in commands]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return outputs


def _scalars(output_dir: Path, tag: str) -> list[float]:
    with (output_dir / "scalars.csv").open() as handle:
        return [float(row["value"]) for row in csv.DictReader(handle) if row["tag"] == tag]


def _data_args(demo_subset, demo_data: DemoPaths, num_images: int) -> list[str]:
    subset = str(demo_subset(num_images))
    return ["--cpu", "--preset", "demo", "--train-json", subset, "--val-json", subset,
            "--images", str(demo_data.image_dir), "--num-workers", "0", "--log-every", "1", "--eval-every", "1000"]


def test_two_processes_train_like_one_with_the_same_global_batch(demo_subset, demo_data, tmp_path: Path) -> None:
    """8 images, 2 epochs: 2 processes x batch 2 against 1 process x batch 4, same data order.

    Images keep their size (one scale, no crop), so padding (which changes a DETR's features near the border)
    is the same in both. Gradients are then the same up to float round-off: the box count that normalises
    the loss is all-reduced, DDP averages the gradients, and the seeded sampler gives global batch k the same
    images in both runs. Round-off does not stay small for long under AdamW: a gradient component that is
    nearly cancelled gets an update of about +-lr whichever way round-off tips it, exactly as between two
    one-process runs with different thread counts. So the parameters are compared after the first epoch
    (2 steps: differences seen 3e-5 to 2.3e-4 as the loss's float formulas changed, against 2 x lr = 8e-4
    per element for a step taken the wrong way, so the bound is 5e-4),
    and the per-step loss and gradient norm, which a data-order or normalisation bug changes by percents,
    over both epochs.
    """
    args = [*_data_args(demo_subset, demo_data, 8), "--train-scales", "128", "--crop", "None", "--epochs", "2",
            "--checkpoint-every", "1", "--keep-last", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run_all([[sys.executable, FINETUNE, *args, "--batch-size", "4", "--output-dir", str(one)],
              _two_processes([FINETUNE, *args, "--batch-size", "2", "--output-dir", str(two)])], tmp_path)

    final_one, final_two = (load_training_checkpoint(d / "checkpoint.pth") for d in (one, two))
    assert final_one["step"] == final_two["step"] == 4  # two processes really ran: 2 steps per epoch
    assert len(final_two["rng_per_process"]) == 2
    torch.testing.assert_close(_scalars(two, "train/loss"), _scalars(one, "train/loss"), rtol=1e-4, atol=0)
    torch.testing.assert_close(_scalars(two, "train/grad_norm"), _scalars(one, "train/grad_norm"), rtol=5e-4, atol=0)
    after_one_epoch = [load_training_checkpoint(d / "checkpoint_0001.pth") for d in (one, two)]
    assert after_one_epoch[0]["step"] == after_one_epoch[1]["step"] == 2
    for name, expected in after_one_epoch[0]["model"].items():
        torch.testing.assert_close(after_one_epoch[1]["model"][name], expected, rtol=0, atol=5e-4, msg=name)


def test_two_process_run_resumes_exactly(demo_subset, demo_data, tmp_path: Path) -> None:
    """Dropout on, multi-scale + crop augmentation: each process draws dropout masks for its own batch shapes,
    so their random states differ; stopping mid-epoch 2 and resuming must restore every process's state.

    The uninterrupted run is also the check that scripts/finetune.py with the demo preset's augmentation
    trains and evaluates in two CPU processes as users launch it (tests/launch.py): it reports both
    processes and writes the six COCO box metrics."""
    args = [*_data_args(demo_subset, demo_data, 8), "--model.dropout", "0.1", "--epochs", "2", "--batch-size", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    output, _ = _run_all([_two_processes([FINETUNE, *args, "--output-dir", str(straight)]),
                          _two_processes([FINETUNE, *args, "--output-dir", str(resumed), "--max-steps", "3"])],
                         tmp_path)
    assert "(2 processes)" in output
    assert set(json.loads((straight / "metrics.json").read_text())) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    stopped = load_training_checkpoint(resumed / "checkpoint.pth")
    assert (stopped["step"], stopped["epoch"], stopped["batch_in_epoch"]) == (3, 1, 1)
    _run_all([_two_processes([FINETUNE, *args, "--output-dir", str(resumed), "--resume", "auto"])], tmp_path)

    expected = load_training_checkpoint(straight / "checkpoint.pth")
    actual = load_training_checkpoint(resumed / "checkpoint.pth")
    assert actual["step"] == expected["step"] == 4
    assert _scalars(resumed, "train/loss") == _scalars(straight, "train/loss")
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    for group_actual, group_expected in zip(actual["optimizer"]["state"].values(),
                                            expected["optimizer"]["state"].values()):
        assert all(torch.equal(group_actual[k], group_expected[k]) for k in group_expected)


@FORKED_GLOO
@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_a_nan_on_one_process_is_handled_by_both(tmp_path: Path, mode: str) -> None:
    """Only rank 1 sees the NaN; both skip that batch and stay in step (or both stop) instead of one of
    them waiting forever in the other's gradient all-reduce (then the run is killed and the test fails).
    The Trainer's behaviour, not the launch's: its two processes are forked (tests/launch.py)."""
    run_main_in_two_processes(entries.main, ["nan-on-one-rank", str(tmp_path), mode], tmp_path, timeout_s=300)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    if mode == "skip":
        assert [r["error"] for r in ranks] == [None, None]
        assert [r["skipped"] for r in ranks] == [1, 1]
        assert [r["step"] for r in ranks] == [15, 15]  # 16 batches per process over 2 epochs, 1 skipped
        assert ranks[0]["params"] == ranks[1]["params"]
        assert all(v == v for v in ranks[0]["params"])  # no NaN reached the weights
    else:
        assert "step 3" in ranks[0]["error"] and "another process" in ranks[0]["error"]
        assert "step 3" in ranks[1]["error"] and "loss_fit" in ranks[1]["error"]
        assert [r["step"] for r in ranks] == [2, 2]
