"""A trained detector, rebuilt from any detector checkpoint this library writes, ready to run.

Two kinds of file hold a whole detector: a fine-tuning run's ``checkpoint.pth`` (its config, class count
and COCO category ids recorded beside the weights) and a detector pretext's ``pretrained.pth`` (DetReg,
UP-DETR, Pair DETR: the model config and the task; its one class is "object", so its boxes are
class-agnostic). A backbone pretext's ``pretrained.pth`` holds a backbone only and is refused here.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detr_ssl.config import LossConfig, PairConfig
from detr_ssl.engine.evaluate import Detect
from detr_ssl.errors import CheckpointError
from detr_ssl.models.checkpoint_io import load_untrusted, state_dict_of
from detr_ssl.models.config import ModelConfig
from detr_ssl.tasks.supervised import build_supervised

__all__ = ["LoadedDetector", "load_detector", "model_config_from_plain"]

_PAIR_KEYS = ("corner_", "center_")
"""State-dict key fragments only a Pair DETR has."""


def _field_value(annotation: Any, value: Any) -> Any:
    """A JSON value back as the dataclass field's type: lists as tuples, strings as paths."""
    hint = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, str) and Path in hint:
        return Path(value)
    return value


def model_config_from_plain(plain: Mapping[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` that ``to_plain`` wrote into a checkpoint (fields it lacks keep their
    defaults, so a checkpoint of an older version still loads)."""
    hints = typing.get_type_hints(ModelConfig)
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{name: _field_value(hints[name], value) for name, value in plain.items() if name in known})


@dataclass
class LoadedDetector:
    """A detector in eval mode and how to run it."""

    model: nn.Module
    detect: Detect
    """``(model, batch) -> DetectionOutput`` (Pair DETR's boxes come from its keypoint pairs)."""
    num_classes: int
    category_ids: list[int] | None
    """COCO category id of each class index (a fine-tuned detector), None for a pretext's one class."""
    category_names: list[str] | None
    """Name of each class index, where the checkpoint records them (fine-tuned since names were recorded)."""
    task: str | None
    """The pretext task that wrote the file, None for a fine-tuned detector."""
    input_size: tuple[int, int] | None = None
    """(short side, long-side cap) of the images it was evaluated (fine-tuned) or pretrained on."""
    eval_batch_size: int | None = None
    """Images per batch of the run's evaluation (a fine-tuned detector)."""


def _class_count(state: Mapping[str, torch.Tensor], path: Path) -> int:
    for key, tensor in state.items():
        if key.endswith("class_heads.0.weight"):
            return int(tensor.shape[0])
    raise CheckpointError(f"{path}: no detector class head in this checkpoint (a backbone-only file?)")


def load_detector(path: Path, device: str | torch.device = "cpu", checkpoint: Any = None) -> LoadedDetector:
    """The detector stored in ``path`` (a fine-tuning ``checkpoint.pth`` or a detector pretext's
    ``pretrained.pth``), weights loaded strictly, in eval mode on ``device``. ``checkpoint`` is the file's
    content when the caller has already read it.

    Raises:
        CheckpointError: naming the file, when it holds no detector (a backbone pretext's export, a foreign
            or corrupt file) or its weights do not fit the architecture it records.
    """
    path = Path(path)
    checkpoint = load_untrusted(path) if checkpoint is None else checkpoint
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a detr-ssl detector checkpoint (no recorded config)")
    state = state_dict_of(checkpoint, path)
    if not any(".class_heads." in key or key.startswith("class_heads.") for key in state):
        raise CheckpointError(f"{path}: holds no detector (a backbone pretext's export holds a backbone only; "
                              f"use it as --backbone-init or --pretrained for fine-tuning)")
    fine_tuned = isinstance(config.get("model"), dict)
    # The weights come from the checkpoint, not from the backbone file the run started from.
    model_config = replace(model_config_from_plain(config["model"] if fine_tuned else config), backbone_weights=None)
    pair = any(fragment in key for key in state for fragment in _PAIR_KEYS)
    architecture = config.get("architecture", "deformable_detr") if fine_tuned else (
        "pairdetr" if pair else "deformable_detr")
    num_classes = int(checkpoint.get("num_classes") or _class_count(state, path))
    model, task = build_supervised(architecture, model_config, num_classes, LossConfig(), PairConfig())
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise CheckpointError(f"{path}: the weights do not fit the {architecture} it records ({first})") from None
    category_ids = checkpoint.get("category_ids") if fine_tuned else None
    category_names = checkpoint.get("category_names") if fine_tuned else None
    if fine_tuned:
        data, optim = config.get("data", {}), config.get("optim", {})
        input_size = (int(data["eval_size"]), int(data["max_size"])) if "eval_size" in data else None
        eval_batch_size = int(optim["batch_size"]) if "batch_size" in optim else None
    else:
        recorded = checkpoint.get("input_size")
        input_size, eval_batch_size = (tuple(int(side) for side in recorded) if recorded else None), None
    return LoadedDetector(model.to(device).eval(), task.detect, num_classes,
                          [int(c) for c in category_ids] if category_ids else None,
                          [str(name) for name in category_names] if category_names else None,
                          None if fine_tuned else checkpoint.get("task"), input_size, eval_batch_size)
