"""scripts/semisup.py at tiny scale: two fractions of 16 demo images, random and backbone-only init, 1-2
epochs each; the demo's pretraining chain on one step; the report without matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from launch import run_captured

from detr_ssl.cli.finetune_runs import RunData
from detr_ssl.cli.common import run_main
from detr_ssl.cli.run_pool import run_jobs
from detr_ssl.cli.semisup import (
    CHAIN_KEY,
    DEMO_PRETRAIN_CHAIN,
    PretrainStep,
    SemiSupConfig,
    chain_jobs,
    main,
    parse_inits,
    parse_schedule,
    plot_ap_vs_fraction,
    step_argv,
)
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.errors import ConfigError, DataError
from detr_ssl.protocols.report import aggregate
from detr_ssl.tasks import all_tasks

REPO = Path(__file__).resolve().parents[2]
TINY = ["--preset", "demo", "--model-size", "tiny", "--batch-size", "4", "--num-workers", "0"]


@pytest.fixture(scope="module")
def small_data(demo_data, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Data flags: the first 16 demo training images, validated on the first 8 validation images."""
    folder = tmp_path_factory.mktemp("data")
    for name, source, count in (("train.json", demo_data.train_json, 16), ("val.json", demo_data.val_json, 8)):
        document = json.loads(source.read_text())
        document["images"] = document["images"][:count]
        kept = {image["id"] for image in document["images"]}
        document["annotations"] = [a for a in document["annotations"] if a["image_id"] in kept]
        (folder / name).write_text(json.dumps(document))
    return ["--train-json", str(folder / "train.json"), "--val-json", str(folder / "val.json"),
            "--images", str(demo_data.image_dir)]


@pytest.fixture(scope="module")
def semisup_run(small_data, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, str]:
    """(argv, output folder, stdout) of a finished tiny benchmark: 25% and 50% of 16 images, random and
    backbone-only init, two runs side by side; the schedule gives 50% one epoch, so 25% (half the images)
    gets two, with a checkpoint after each."""
    folder = tmp_path_factory.mktemp("semisup")
    backbone = folder / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), backbone)
    argv = [*small_data, *TINY, "--fractions", "0.25", "0.5", "--schedule", "0.5=1", "--random-init",
            "--backbone-init", str(backbone), "--output-dir", str(folder / "out"), "--jobs", "2",
            "--checkpoint-every", "1"]
    code, stdout = run_captured(main, argv)
    assert code == 0, stdout
    return argv, folder / "out", stdout


def test_results_table_and_plot(semisup_run) -> None:
    _, out, stdout = semisup_run
    results = json.loads((out / "results.json").read_text())
    runs = {(run["fraction"], run["init"]): run for run in results["runs"]}
    assert set(runs) == {(0.25, "backbone"), (0.25, "random"), (0.5, "backbone"), (0.5, "random")}
    assert [(runs[0.25, "random"]["epochs"], runs[0.5, "random"]["epochs"])] == [(2, 1)]
    assert runs[0.25, "random"]["num_labelled"] == 4 and runs[0.5, "random"]["num_labelled"] == 8
    assert all(set(run["metrics"]) >= {"AP", "AP50", "AP75"} for run in runs.values())
    assert [(e["fraction"], e["init"]) for e in results["summary"]] == [
        (0.25, "backbone"), (0.25, "random"), (0.5, "backbone"), (0.5, "random")]
    table = (out / "results.md").read_text()
    assert "| labels | init | seeds | AP | AP50 | AP75 |" in table
    assert f"| 25% | random | 1 | {100 * runs[0.25, 'random']['metrics']['AP']:.1f} |" in table
    assert (out / "ap_vs_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "folds" / "train.42@25.json").is_file() and (out / "folds" / "train.42@50.image_ids.json").is_file()
    assert stdout.count(": done in ") == 4
    # The runs ran in two workers, each run's own output in its folder; the report keeps the runs' order.
    assert [(run["fraction"], run["init"]) for run in results["runs"]] == [
        (0.25, "backbone"), (0.25, "random"), (0.5, "backbone"), (0.5, "random")]
    assert "metrics written to" not in stdout
    for run in results["runs"]:
        assert "metrics written to" in (out / run["dir"] / "console.log").read_text()


def test_each_initialisation_reaches_the_model(semisup_run) -> None:
    _, out, _ = semisup_run
    configs = {init: torch.load(out / "50pct" / f"{init}_seed42" / "checkpoint.pth", map_location="cpu",
                                weights_only=True)["config"] for init in ("backbone", "random")}
    assert configs["backbone"]["model"]["backbone_norm"] == "frozen_bn"
    assert configs["backbone"]["model"]["backbone_weights"].endswith("resnet18.pth")
    assert configs["random"]["model"]["backbone_weights"] is None and configs["random"]["pretrained"] is None
    assert configs["random"]["data"]["train_json"].endswith("train.42@50.json")
    assert configs["random"]["data"]["val_json"].endswith("val.json")  # the full val set


def test_each_run_keeps_only_its_last_checkpoint(semisup_run) -> None:
    _, out, _ = semisup_run
    runs = json.loads((out / "results.json").read_text())["runs"]
    for run in runs:
        folder = out / run["dir"]
        last = folder / f"checkpoint_{run['epochs']:04d}.pth"
        assert sorted(folder.glob("checkpoint*.pth")) == [folder / "checkpoint.pth", last]
        assert (folder / "checkpoint.pth").samefile(last)


def test_rerun_skips_finished_runs(semisup_run) -> None:
    argv, out, _ = semisup_run
    checkpoint = out / "25pct" / "random_seed42" / "checkpoint.pth"
    before = checkpoint.stat().st_mtime_ns
    code, stdout = run_captured(main, argv)
    assert code == 0 and stdout.count("finished before, skipped") == 4 and "running" not in stdout
    assert checkpoint.stat().st_mtime_ns == before


def test_without_matplotlib_the_plot_is_skipped_with_a_message(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # makes the import fail
    summary = aggregate([{"fraction": 0.1, "init": "random", "seed": 42, "metrics": {"AP": 0.1}}],
                        ["fraction", "init"])
    assert plot_ap_vs_fraction(summary, tmp_path / "ap.png") is False
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "ap.png").exists()


def test_inits_from_the_command_line(tmp_path: Path) -> None:
    checkpoint = tmp_path / "a.pth"
    checkpoint.write_bytes(b"")
    cfg = SemiSupConfig(pretrained=(f"detreg={checkpoint}", f"updetr={checkpoint}"), backbone_init=checkpoint,
                        random_init=True)
    inits = parse_inits(cfg)
    assert [(i.name, i.pretrained, i.backbone) for i in inits] == [
        ("detreg", checkpoint, None), ("updetr", checkpoint, None), ("backbone", None, checkpoint),
        ("random", None, None)]
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_inits(SemiSupConfig(pretrained=(str(checkpoint),)))
    with pytest.raises(ConfigError, match="twice"):
        parse_inits(SemiSupConfig(pretrained=(f"a={checkpoint}", f"a={checkpoint}")))
    with pytest.raises(DataError, match="missing.pth"):
        parse_inits(SemiSupConfig(pretrained=(f"a={tmp_path / 'missing.pth'}",)))


def test_schedule_flag() -> None:
    assert parse_schedule(["0.01=2000", "0.5=20"]) == {0.01: 2000, 0.5: 20}
    for bad in (["0.01"], ["x=3"], ["0=10"], ["0.1=0"], []):
        with pytest.raises(ConfigError, match="schedule"):
            parse_schedule(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "--train-json"), (["--random-init"], "--train-json"), (["--demo", "--train-json", "t.json"], "--demo")],
)
def test_bad_configuration_is_one_line(argv: list[str], message: str, capsys) -> None:
    code = run_main(main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err


def test_no_initialisation_is_a_config_error(small_data, capsys) -> None:
    code = run_main(main, [*small_data, *TINY])
    assert code == 2 and "nothing to compare" in capsys.readouterr().err


def test_chain_step_flags(tmp_path: Path) -> None:
    data = RunData(tmp_path / "train.json", tmp_path / "images", tmp_path / "val.json", tmp_path / "images")
    step = PretrainStep("detreg", ("--epochs", "3"), from_previous=("--teacher-checkpoint", "--backbone-init"))
    first = step_argv(step, tmp_path / "out", data, previous=None)
    assert "--teacher-checkpoint" not in first and "--backbone-init" not in first
    later = step_argv(step, tmp_path / "out", data, previous=tmp_path / "1-swav")
    swav_file = str(tmp_path / "1-swav" / "backbone_swav_layout.pth")
    assert later[later.index("--teacher-checkpoint") + 1] == swav_file
    cfg = parse_pretrain_args(later)  # every flag exists in the pretraining CLI
    assert (cfg.task, cfg.preset, cfg.optim.epochs, cfg.backbone_init) == ("detreg", "demo", 3, Path(swav_file))
    assert (cfg.run.resume, cfg.run.keep_last) == ("auto", 1)
    assert cfg.data.data == data.train_json and cfg.detreg.teacher_checkpoint == Path(swav_file)
    for step in DEMO_PRETRAIN_CHAIN:  # the demo's own flags parse too
        assert step.task in all_tasks() and parse_pretrain_args(step_argv(step, tmp_path, data, None)).task == step.task


def test_chain_runs_once_and_hands_over_the_last_detector(small_data, tmp_path: Path, capsys) -> None:
    data = RunData(Path(small_data[1]), Path(small_data[5]), Path(small_data[3]), Path(small_data[5]))
    chain = (PretrainStep("detreg", ("--epochs", "1", "--max-steps", "1")),)
    jobs, init = chain_jobs(chain, data, tmp_path / "pretrain")
    assert [job.key for job in jobs] == [CHAIN_KEY]
    assert init.name == "detreg" and init.pretrained == tmp_path / "pretrain" / "1-detreg" / "pretrained.pth"
    run_jobs(jobs, 1, on_start=lambda job: None, on_done=lambda job, result: None)
    assert init.pretrained.is_file()
    assert chain_jobs(chain, data, tmp_path / "pretrain") == ([], init)
    assert "finished before, skipped" in capsys.readouterr().out


def test_each_chain_step_waits_for_the_one_before(tmp_path: Path) -> None:
    data = RunData(tmp_path / "train.json", tmp_path / "images", tmp_path / "val.json", tmp_path / "images")
    jobs, init = chain_jobs(DEMO_PRETRAIN_CHAIN, data, tmp_path / "pretrain")
    assert [job.needs for job in jobs] == [(), (jobs[0].key,)] and jobs[-1].key == CHAIN_KEY
    assert init.name == DEMO_PRETRAIN_CHAIN[-1].task
    assert "--teacher-checkpoint" in jobs[1].work.args[0] and "--teacher-checkpoint" not in jobs[0].work.args[0]


def test_help_documents_the_flags(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "semisup.py"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    for flag in ("--train-json", "--val-json", "--images", "--demo", "--fractions", "--seeds", "--pretrained",
                 "--backbone-init", "--random-init", "--schedule", "--lr-drop-at", "--output-dir"):
        assert flag in result.stdout, flag
