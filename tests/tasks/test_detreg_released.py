"""Our DETReg against the released code (amirbar/DETReg), pinned in tests/fixtures/detreg_released/.

The fixture holds a small batch and what the released DeformableDETR, SetCriterion and teacher computed
on it (``make_fixture.py`` says how it was made; CI never runs that). The released model's weights are
regenerated here from ``recipe.py`` by the name, shape and kind ``meta.json`` lists, loaded into our
DetRegModel through the foreign-checkpoint converter, and every output and loss term must agree.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from detr_ssl.config import LossConfig
from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.losses import build_criterion
from detr_ssl.models.config import ModelConfig
from detr_ssl.models.deformable_detr import DeformableDETR, build_model
from detr_ssl.models.teachers import build_teacher
from detr_ssl.tasks.detreg import DetRegModel, detreg_loss

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "detreg_released"
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}

# Released loss name -> ours (the released criterion also logs class_error and cardinality_error: not losses).
LOSS_NAMES = {"loss_ce": "loss_cls", "loss_bbox": "loss_bbox", "loss_giou": "loss_giou",
              "loss_object_embedding": "loss_embedding"}


def _load_recipe():
    spec = importlib.util.spec_from_file_location("detreg_released_recipe", FIXTURE_DIR / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE_DIR / "meta.json").read_text())


@pytest.fixture(scope="module")
def fixture() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE_DIR / "fixture.pt", map_location="cpu", weights_only=True)


def regenerate(entries: list[list], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """The released state dict: recipe tensors, checked against the recorded sums, plus shared aliases."""
    state = recipe.recipe_state(entries)
    drifted = [name for name, _, _, total in entries
               if recipe.checksum(state[name]) != pytest.approx(total, rel=1e-9, abs=1e-9)]
    assert not drifted, f"recipe.py no longer regenerates the fixture's tensors (NumPy stream?): {drifted[:3]}"
    state.update({alias: state[name] for alias, name in aliases.items()})
    return state


def our_config(meta: dict) -> ModelConfig:
    """Our detector at the fixture's size, from the released arguments it was built with."""
    args = meta["released_args"]
    assert not args["with_box_refine"] and not args["two_stage"] and args["aux_loss"]
    return ModelConfig(backbone=args["backbone"], backbone_norm="frozen_bn", train_backbone=False,
                       hidden_dim=args["hidden_dim"], num_heads=args["nheads"],
                       num_feature_levels=args["num_feature_levels"], enc_points=args["enc_n_points"],
                       dec_points=args["dec_n_points"], enc_layers=args["enc_layers"], dec_layers=args["dec_layers"],
                       ffn_dim=args["dim_feedforward"], dropout=args["dropout"], num_queries=args["num_queries"],
                       msda_backend="pytorch")


@pytest.fixture(scope="module")
def released_state(meta: dict) -> dict[str, torch.Tensor]:
    return regenerate(meta["model_tensors"], meta["model_aliases"])


@pytest.fixture(scope="module")
def loaded(meta: dict, released_state: dict[str, torch.Tensor]) -> tuple[DetRegModel, list[str], list[str]]:
    """Our DetReg model at the fixture's size with the released weights: (model in eval mode, missing, unused)."""
    model = DetRegModel(build_model(our_config(meta), num_classes=meta["num_classes"]), meta["embedding_dim"])
    missing, unused = load_pretrained(model, Path("released-detreg.pth"), checkpoint={"model": released_state})
    return model.eval(), missing, unused


@pytest.fixture(scope="module")
def our_model(loaded: tuple[DetRegModel, list[str], list[str]]) -> DetRegModel:
    return loaded[0]


def _targets(fixture: dict[str, torch.Tensor]) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
    count = len(fixture["inputs/images"])
    targets = [{"labels": fixture[f"targets/{i}/labels"], "boxes": fixture[f"targets/{i}/boxes"]} for i in range(count)]
    return targets, [fixture[f"targets/{i}/patches"] for i in range(count)]


def test_released_checkpoint_loads_every_tensor(loaded: tuple, released_state: dict) -> None:
    """No missing and no unused tensor, and the released object-embedding head is ours."""
    our_model, missing, unused = loaded
    assert missing == [] and unused == []
    head = our_model.embedding_head.layers
    assert torch.equal(head[0].weight, released_state["feature_embed.layers.0.weight"])
    assert torch.equal(head[1].bias, released_state["feature_embed.layers.1.bias"])
    assert torch.equal(our_model.detector.backbone.body.conv1.weight, released_state["backbone.0.body.conv1.weight"])


def test_released_checkpoint_into_a_bare_detector_leaves_only_the_head(meta: dict, released_state: dict) -> None:
    detector: DeformableDETR = build_model(our_config(meta), num_classes=meta["num_classes"])
    missing, unused = load_pretrained(detector, Path("released-detreg.pth"), checkpoint={"model": released_state})
    assert missing == []
    assert unused == ["embedding_head.layers.0.bias", "embedding_head.layers.0.weight",
                      "embedding_head.layers.1.bias", "embedding_head.layers.1.weight"]


@torch.no_grad()
def test_outputs_and_losses_equal_the_released(our_model: DetRegModel, fixture: dict, meta: dict) -> None:
    output, embeddings = our_model(fixture["inputs/images"], fixture["inputs/mask"])
    assert len(output.aux) == meta["released_args"]["dec_layers"] - 1
    ours = {"pred_logits": output.logits, "pred_boxes": output.boxes, "pred_features": embeddings[-1]}
    for i, aux in enumerate(output.aux):
        ours[f"aux_outputs/{i}/pred_logits"] = aux.logits
        ours[f"aux_outputs/{i}/pred_boxes"] = aux.boxes
    released = {k.removeprefix("outputs/"): v for k, v in fixture.items() if k.startswith("outputs/")}
    assert ours.keys() == released.keys()
    for name, value in released.items():
        torch.testing.assert_close(ours[name], value, **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")

    weights = meta["weight_dict"]
    loss_config = LossConfig(cls_weight=weights["loss_ce"], bbox_weight=weights["loss_bbox"],
                             giou_weight=weights["loss_giou"], focal_alpha=meta["released_args"]["focal_alpha"])
    assert loss_config == LossConfig()  # the released weights are our defaults
    criterion = build_criterion(meta["num_classes"], LossConfig())
    targets, target_embeddings = _targets(fixture)
    loss = detreg_loss(criterion, output, embeddings, targets, target_embeddings, embedding_layers="last",
                       embedding_weight=weights["loss_object_embedding"])

    for suffix, layer in [("", "final")] + [(f"_{i}", str(i)) for i in range(len(output.aux))]:
        for image, (query, target) in enumerate(loss.layer_indices[suffix]):
            assert torch.equal(torch.stack([query, target]), fixture[f"matching/{layer}/{image}"]), (layer, image)

    released_terms = {}
    for key, value in fixture.items():
        name = key.removeprefix("losses/")
        if not key.startswith("losses/") or name == "total" or name.startswith(("class_error", "cardinality_error")):
            continue
        for released_name, our_name in LOSS_NAMES.items():
            if name == released_name or name.startswith(released_name + "_"):
                released_terms[our_name + name.removeprefix(released_name)] = value
                break
        else:
            raise AssertionError(f"the fixture has a loss term {name!r} this test does not know")
    assert loss.terms.keys() == released_terms.keys()
    for name, value in released_terms.items():
        torch.testing.assert_close(loss.terms[name], value, **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")
    torch.testing.assert_close(loss.total, fixture["losses/total"], **TOLERANCE)


def test_teacher_equals_the_released(meta: dict, fixture: dict, tmp_path: Path) -> None:
    """Our teacher (ResNet-50 up to layer2, average pooled) on the released teacher's weights, read from a
    SwAV-layout file, gives the released ``build_swav_backbone_old`` embeddings."""
    state = regenerate(meta["teacher_tensors"], meta["teacher_aliases"])
    path = tmp_path / "swav_like.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    del state
    teacher = build_teacher(path, "resnet50", meta["teacher_stage"])
    embeddings = teacher(fixture["teacher/crops"])
    torch.testing.assert_close(embeddings, fixture["teacher/embeddings"], **TOLERANCE)
