"""The command line is derived from the typed configs; presets set every default."""

from __future__ import annotations

from pathlib import Path

import pytest

from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.config import parse_finetune_args, to_plain
from detr_ssl.models.config import MODEL_PRESETS, model_preset


def test_no_data_flags_selects_demo_preset() -> None:
    cfg = parse_finetune_args([])
    assert cfg.preset == "demo" and cfg.model.backbone == "resnet18" and cfg.data.train_json is None


def test_data_flags_select_paper_preset_with_published_numbers() -> None:
    cfg = parse_finetune_args(["--train-json", "t.json", "--val-json", "v.json", "--images", "img"])
    assert cfg.preset == "paper"
    assert (cfg.model.backbone, cfg.model.enc_layers, cfg.model.dec_layers) == ("resnet50", 6, 6)
    assert (cfg.model.hidden_dim, cfg.model.num_queries, cfg.model.ffn_dim) == (256, 300, 1024)
    assert (cfg.optim.lr, cfg.optim.lr_backbone, cfg.optim.weight_decay) == (2e-4, 2e-5, 1e-4)
    assert (cfg.optim.epochs, cfg.optim.lr_drop, cfg.optim.clip_max_norm) == (50, 40, 0.1)
    assert (cfg.loss.cls_weight, cfg.loss.bbox_weight, cfg.loss.giou_weight) == (2.0, 5.0, 2.0)
    assert cfg.data.train_json == Path("t.json")


def test_flags_override_preset_fields() -> None:
    cfg = parse_finetune_args(["--train-json", "t.json", "--model-size", "tiny", "--epochs", "3", "--lr", "1e-3",
                               "--model.two-stage", "--resume", "auto"])
    assert cfg.model.backbone == "resnet18" and cfg.model.two_stage
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.run.resume) == (3, 1e-3, "auto")


def test_bad_choice_exits_with_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        parse_finetune_args(["--model-size", "huge"])
    assert info.value.code != 0


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_model_presets_are_consistent(name: str) -> None:
    cfg = model_preset(name)
    assert cfg.hidden_dim % cfg.num_heads == 0
    assert cfg.num_feature_levels >= 1


def test_unknown_model_preset() -> None:
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        model_preset("huge")


def test_to_plain_is_json_ready() -> None:
    plain = to_plain(parse_finetune_args(["--train-json", "t.json"]))
    assert plain["data"]["train_json"] == "t.json" and isinstance(plain["data"]["train_scales"], list)


def test_model_flag_selects_pair_detr_and_its_options() -> None:
    cfg = parse_finetune_args(["--model", "pairdetr", "--pair.temperature", "0.2", "--model.hidden-dim", "32"])
    assert cfg.architecture == "pairdetr" and cfg.pair.temperature == 0.2 and cfg.model.hidden_dim == 32
    assert parse_finetune_args([]).architecture == "deformable_detr"


def test_detreg_crops_the_teacher_inputs_at_32_px_on_the_demo_only() -> None:
    assert parse_pretrain_args(["--task", "detreg"]).detreg.crop_size == 32
    paper = parse_pretrain_args(["--task", "detreg", "--preset", "paper"])
    assert paper.detreg.crop_size == 128  # the released value
    assert parse_pretrain_args(["--task", "detreg", "--crop-size", "64"]).detreg.crop_size == 64
