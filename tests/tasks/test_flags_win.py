"""A task adjusts the preset's defaults (``defaults()``), never the flags: ``configure()`` accepts a config
unchanged or refuses it with one line naming the flags. Parametrised over the registry, so a new task is
covered as soon as it registers."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detr_ssl.cli.common import run_main
from detr_ssl.cli.pretrain import main
from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.config import PretrainConfig, with_backbone_init
from detr_ssl.errors import ConfigError
from detr_ssl.tasks import all_tasks, get_task

SCHEDULE_FLAGS = ["--lr", "5e-5", "--epochs", "3", "--lr-drop", "2"]
# The paper recipe starts from real weights (DetReg refuses to run it without them); the files are not read here.
PRESETS = {"demo": [], "paper": ["--preset", "paper", "--backbone-init", "swav.pth"]}
TEACHER = {"detreg": ["--teacher-checkpoint", "swav.pth"]}


def parsed_as_pretrain_sees_it(argv: list[str]) -> PretrainConfig:
    """What scripts/pretrain.py hands to ``configure()``: the parsed flags with --backbone-init applied."""
    config = parse_pretrain_args(argv)
    return replace(config, model=with_backbone_init(config.model, config.backbone_init))


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", sorted(all_tasks()))
def test_schedule_flags_survive_every_task(name: str, preset: str) -> None:
    teacher = TEACHER.get(name, []) if preset == "paper" else []
    parsed = parsed_as_pretrain_sees_it(["--task", name, *SCHEDULE_FLAGS, *PRESETS[preset], *teacher])
    assert parsed.preset == preset
    configured = get_task(name).configure(parsed)
    assert (configured.optim.lr, configured.optim.epochs, configured.optim.lr_drop) == (5e-5, 3, 2)
    assert configured == parsed  # configure() checks; it never rewrites what the flags and defaults gave


def test_updetr_defaults_are_the_papers_until_a_flag_says_otherwise() -> None:
    paper = parse_pretrain_args(["--task", "updetr", "--preset", "paper"])
    assert (paper.optim.lr, paper.optim.epochs, paper.optim.lr_drop) == (1e-4, 60, 40)
    assert (paper.model.num_queries, paper.updetr.num_patches, paper.model.train_backbone) == (100, 10, False)
    demo = parse_pretrain_args(["--task", "updetr"])
    assert (demo.model.num_queries, demo.updetr.num_patches, demo.model.train_backbone) == (30, 3, False)
    flags = parse_pretrain_args(["--task", "updetr", "--preset", "paper", "--model.num-queries", "200",
                                 "--model.train-backbone"])
    configured = get_task("updetr").configure(flags)
    assert (configured.model.num_queries, configured.model.train_backbone) == (200, True)
    assert get_task("updetr")(configured).queries_per_patch == 20


def test_pairdetr_backbone_is_frozen_by_default_only() -> None:
    assert not parse_pretrain_args(["--task", "pairdetr"]).model.train_backbone
    flags = parse_pretrain_args(["--task", "pairdetr", "--model.train-backbone"])
    assert get_task("pairdetr").configure(flags).model.train_backbone


@pytest.mark.parametrize(("argv", "message"), [
    (["--task", "updetr", "--model.num-queries", "31"],
     "--model.num-queries 31 is not a multiple of --updetr.num-patches 3"),
    (["--task", "updetr", "--updetr.num-patches", "4"],
     "--model.num-queries 30 is not a multiple of --updetr.num-patches 4"),
    (["--task", "updetr", "--updetr.num-patches", "0"], "--updetr.num-patches must be positive"),
    (["--task", "updetr", "--model.two-stage"], "drop --model.two-stage"),
    (["--task", "pairdetr", "--model.two-stage"], "drop --model.two-stage"),
])
def test_a_value_the_task_cannot_run_is_refused_naming_the_flags(argv: list[str], message: str) -> None:
    config = parse_pretrain_args(argv)
    with pytest.raises(ConfigError) as info:
        get_task(config.task).configure(config)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_cli_refuses_a_conflict_in_one_line(capsys) -> None:
    code = run_main(main, ["--task", "updetr", "--model.num-queries", "31"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --task updetr")
    assert "--model.num-queries 31" in err and "--updetr.num-patches 3" in err


def test_updetr_splits_changed_queries_evenly_among_changed_patches() -> None:
    """--updetr.num-patches 5 on the demo's 30 queries: 6 queries per patch, and a training step runs."""
    from detr_ssl.datasets.collate import Batch

    config = get_task("updetr").configure(parse_pretrain_args(["--task", "updetr", "--updetr.num-patches", "5"]))
    task = get_task("updetr")(config)
    assert task.queries_per_patch == 6
    torch.manual_seed(0)
    model = task.build_model()
    batch = Batch(images=torch.randn(1, 3, 64, 64), mask=torch.zeros(1, 64, 64, dtype=torch.bool),
                  targets=[{"size": torch.tensor([64, 64]), "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    loss = task.compute_loss(model, batch)
    assert torch.isfinite(loss.total)


def test_updetr_on_the_paper_preset_trains_with_the_flags_lr_and_epochs(demo_photos: Path, tmp_path: Path) -> None:
    """The user's command, at tiny scale: the paper preset's 1e-4 / 60 epochs must not replace --lr / --epochs."""
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted(demo_photos.iterdir())[:2]:
        (images / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    code = run_main(main, ["--task", "updetr", "--lr", "5e-5", "--epochs", "3", "--preset", "paper",
                           "--data", str(images), "--model-size", "tiny", "--batch-size", "2", "--num-workers", "0",
                           "--train-scales", "64", "--max-size", "64", "--log-every", "1",
                           "--output-dir", str(out)])
    assert code == 0
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["step"]) == (3, 3)  # 3 epochs of one batch each
    assert (checkpoint["config"]["optim"]["lr"], checkpoint["config"]["optim"]["epochs"]) == (5e-5, 3)
    assert {group["name"]: group["lr"] for group in checkpoint["optimizer"]["param_groups"]}["rest"] == 5e-5
    with (out / "scalars.csv").open() as handle:
        lrs = [float(row["value"]) for row in csv.DictReader(handle) if row["tag"] == "lr/rest"]
    assert lrs == [5e-5] * 3
