"""The pretext comparison: its plan follows the task registry, every method trains on the same folds, an
interrupted comparison continues without redoing finished runs, and the report pairs each method with
random init."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import detr_ssl.cli.compare as compare_module
import detr_ssl.tasks as tasks_package
from detr_ssl.cli.common import run_main
from detr_ssl.cli.compare import STAGE_FILE, CompareConfig, Comparison, compare, demo_compare, parse_compare_args
from detr_ssl.cli.compare_report import paired_differences
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.datasets.coco_json import read_json
from detr_ssl.datasets.demo import DemoPaths
from detr_ssl.errors import ConfigError
from detr_ssl.protocols.comparison import RANDOM, FinetuneStage, PretrainStage, build_plan
from detr_ssl.tasks import all_tasks

TOY_TASK = """
from detr_ssl.tasks import register_task
from detr_ssl.tasks.backbone_pretext import BackbonePretextTask


@register_task("toypretext")
class ToyPretext(BackbonePretextTask):
    pass
"""


def test_a_task_module_added_to_the_registry_joins_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toypretext.py").write_text(TOY_TASK)
    all_tasks()  # every real task registered first: the registry patched below is a copy of the full one
    monkeypatch.setattr(tasks_package, "__path__", [*tasks_package.__path__, str(tmp_path)])
    monkeypatch.setattr(tasks_package, "TASKS", dict(tasks_package.TASKS))
    try:
        plan = Comparison(CompareConfig(demo=True, tasks=None, output_dir=tmp_path / "out")).plan
    finally:
        sys.modules.pop("detr_ssl.tasks.toypretext", None)
    assert PretrainStage("toypretext") in plan.pretraining
    assert "toypretext" in [method.name for method in plan.methods]
    assert {stage.method.name for stage in plan.finetuning} == {method.name for method in plan.methods}


def test_the_plan_pretrains_the_chain_first_and_starts_detector_pretexts_from_it() -> None:
    plan = build_plan(("detreg", "pixpro", "swav"), "swav", (0.1, 0.5), (1, 2))
    assert [stage.task for stage in plan.pretraining] == ["swav", "detreg", "pixpro"]
    assert [stage.builds_on for stage in plan.pretraining] == [None, "swav", None]
    assert [m.name for m in plan.methods] == [RANDOM, "backbone-swav", "detreg", "pixpro"]
    assert len(plan.finetuning) == 2 * 2 * 4
    detreg = next(stage for stage in plan.finetuning if stage.method.name == "detreg")
    assert [need.task for need in plan.needs(detreg)] == ["detreg"]
    assert plan.needs(plan.pretraining[1]) == [plan.pretraining[0]]
    assert plan.needed_numbers(detreg) == [2] and plan.needed_numbers(plan.pretraining[0]) == []
    with pytest.raises(ConfigError, match="unknown task"):
        build_plan(("nosuchtask",), "swav", (0.1,), (1,))
    with pytest.raises(ConfigError, match="not a backbone pretext"):
        build_plan(("swav",), "detreg", (0.1,), (1,))


def test_paired_differences_compare_each_seed_with_random_init_on_it() -> None:
    def run(init: str, seed: int, ap: float) -> dict:
        return {"init": init, "fraction": 0.5, "seed": seed, "metrics": {"AP": ap}}

    runs = [run(RANDOM, 1, 0.10), run(RANDOM, 2, 0.30), run("detreg", 1, 0.15), run("detreg", 2, 0.33)]
    (row,) = paired_differences(runs)
    assert row["init"] == "detreg" and row["n"] == 2
    # Differences 0.05 and 0.03: mean 0.04, sample standard deviation 0.02 / sqrt(2).
    assert row["mean"] == pytest.approx(0.04) and row["std"] == pytest.approx(0.02 / 2**0.5)


def _tiny_argv(out: Path) -> list[str]:
    return ["--demo", "--tasks", "swav", "detreg", "--fractions", "0.5", "--seeds", "1", "2",
            "--output-dir", str(out), "--max-steps", "2", "--jobs", "1",
            "--pretrain-flags", "swav=--epochs 1 --max-steps 2 --batch-size 8",
            "--pretrain-flags", "detreg=--epochs 1 --max-steps 2 --crop-size 64"]


def _stages_in_this_process(command: list[str], check: bool = False) -> subprocess.CompletedProcess:
    """Stands in for ``subprocess.run`` of a stage command (``python -m detr_ssl.cli.compare ... --stage K``):
    the same entry point, without a new interpreter's start-up per stage."""
    assert command[1:3] == ["-m", "detr_ssl.cli.compare"] and command[-2] == "--stage"
    return subprocess.CompletedProcess(command, run_main(compare_module.main, command[3:]))


@pytest.mark.slow
def test_a_tiny_comparison_runs_resumes_and_reports(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch, demo_data: DemoPaths,
                                                    demo_subset: Callable[..., Path]) -> None:
    monkeypatch.setattr(compare_module.subprocess, "run", _stages_in_this_process)
    out = tmp_path / "cmp"
    # Half the demo's images (folds of 16), which halves the evaluations and the k-NN probes' banks.
    argv = [*_tiny_argv(out), "--train-json", str(demo_subset(32)), "--val-json", str(demo_subset(8, "val")),
            "--images", str(demo_data.image_dir)]
    results = compare(parse_compare_args(argv), argv)
    assert {run["init"] for run in results["runs"]} == {RANDOM, "backbone-swav", "detreg"}
    assert len(results["runs"]) == 6 and (out / "results.md").is_file() and (out / "ap_vs_fraction.png").is_file()
    # Every method of a (fraction, seed) fine-tuned on the same fold: the training JSON each run recorded.
    folds: dict[int, set[str]] = {}
    for run in results["runs"]:
        state = torch.load(out / run["dir"] / "checkpoint.pth", weights_only=True)
        folds.setdefault(run["seed"], set()).add(state["config"]["data"]["train_json"])
    assert all(len(paths) == 1 for paths in folds.values()) and folds[1] != folds[2]
    ids = [sorted(image["id"] for image in read_json(Path(next(iter(paths))))["images"]) for paths in folds.values()]
    assert ids[0] != ids[1] and all(len(fold) == 16 for fold in ids)
    # The measures: k-NN for every pretraining, recall of its own boxes for the detector pretext.
    assert set(results["pretraining"]) == {"swav", "detreg"}
    assert "recall" in results["pretraining"]["detreg"]["measures"]
    assert 0.0 <= results["pretraining"]["detreg"]["measures"]["recall"]["AR@100"] <= 1.0
    assert "recall" not in results["pretraining"]["swav"]["measures"]

    # Interrupted: one fine-tune lost its result and DetReg its record. The rerun redoes exactly those.
    lost = out / results["runs"][-1]["dir"] / "metrics.json"
    lost.unlink()
    (out / "pretrain" / "detreg" / STAGE_FILE).unlink()
    capfd.readouterr()
    again = compare(parse_compare_args(argv), argv)
    driver_lines = [line for line in capfd.readouterr().out.splitlines() if re.match(r"\[\d+/8\] ", line)]
    assert sum(line.endswith(": running") for line in driver_lines) == 2
    assert sum(line.endswith("finished before, skipped") for line in driver_lines) == 6
    assert lost.is_file() and len(again["runs"]) == 6


def test_dry_run_prints_every_stage_with_its_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _tiny_argv(tmp_path / "cmp") + ["--dry-run"]
    assert compare(parse_compare_args(argv), argv) is None
    printed = capsys.readouterr().out
    assert "pretrain swav" in printed and "pretrain detreg (on swav)" in printed
    assert printed.count("finetune ") == 6 and "8 stages" in printed
    assert not (tmp_path / "cmp").exists()


def test_a_pretraining_stage_resumes_and_keeps_one_checkpoint(tmp_path: Path) -> None:
    comparison = Comparison(parse_compare_args(_tiny_argv(tmp_path / "cmp")))
    for stage in comparison.plan.stages:
        if isinstance(stage, PretrainStage):
            run = parse_pretrain_args(comparison.pretrain_argv(stage)).run
            assert (run.resume, run.keep_last, run.output_dir) == ("auto", 1, comparison.stage_dir(stage))


def test_a_stage_refuses_to_run_before_what_it_needs(tmp_path: Path) -> None:
    comparison = Comparison(parse_compare_args(_tiny_argv(tmp_path / "cmp")))
    detreg_stage = comparison.plan.stages.index(PretrainStage("detreg", "swav")) + 1
    with pytest.raises(ConfigError, match="needs pretrain swav finished first"):
        comparison.run_stage(detreg_stage)
    with pytest.raises(ConfigError, match="the plan has stages 1 to 8"):
        comparison.run_stage(9)


def test_the_demo_compares_random_backbone_detreg_and_a_dense_pretext_over_three_seeds() -> None:
    plan = Comparison(demo_compare()).plan
    names = [method.name for method in plan.methods]
    assert names[:2] == [RANDOM, "backbone-swav"] and "detreg" in names and len(names) == 4
    assert all(isinstance(stage, FinetuneStage) for stage in plan.finetuning)
    assert len(demo_compare().seeds) >= 3
    assert all(task in all_tasks() for task in names[2:])


def test_each_stage_runs_behind_the_launcher_as_this_module(tmp_path: Path) -> None:
    cfg = parse_compare_args(["--demo", "--launcher", "accelerate launch --num_processes 2"])
    assert compare_module.stage_command(cfg, ["--demo"], 3) == [
        "accelerate", "launch", "--num_processes", "2", "-m", "detr_ssl.cli.compare", "--demo", "--stage", "3"]
    plain = compare_module.stage_command(parse_compare_args(["--demo"]), ["--demo"], 1)
    assert plain[0] == sys.executable
    # The module runs as a program: the dry run of the demo, in a new interpreter.
    result = subprocess.run([*plain[:3], "--demo", "--dry-run", "--output-dir", str(tmp_path / "cmp")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "pretrain detreg (on swav)" in result.stdout and "stages" in result.stdout


def test_the_demo_runs_two_stages_at_a_time_each_after_the_stages_it_needs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    handed: dict[str, object] = {}
    monkeypatch.setattr(compare_module, "run_jobs", lambda jobs, workers, on_start, on_done: handed.update(
        jobs=jobs, workers=workers))
    argv = ["--demo", "--output-dir", str(tmp_path / "cmp")]
    comparison = Comparison(parse_compare_args(argv))
    compare_module.run_stages(comparison, argv)
    stages = comparison.plan.stages
    assert handed["workers"] == 2 and len(handed["jobs"]) == len(stages)
    for job, stage in zip(handed["jobs"], stages):
        assert job.needs == tuple(str(stages.index(need) + 1) for need in comparison.plan.needs(stage))
        assert job.log_file.parent == comparison.stage_dir(stage) and job.work.args[-1] == int(job.key)
    assert any(job.needs for job in handed["jobs"]) and not handed["jobs"][0].needs
