"""Checkpoints: plain dicts written atomically, read with ``weights_only=True``.

Layout of a training checkpoint (``torch.save`` of a dict):
``model`` (state dict), ``optimizer``, ``lr_scheduler``, ``epoch`` (epochs completed), ``step``
(optimizer steps completed), ``batch_in_epoch`` (batches of the current epoch already consumed),
``config`` (the run's config as plain builtins), ``num_classes``, ``category_ids``, ``category_names``,
``rng`` (the main process's generators, see :mod:`detr_ssl.engine.rng`) and ``rng_per_process`` (every
process's, by rank). Without the training state (:data:`TRAINING_STATE_KEYS`) it is a weights-only file
like a pretext's ``pretrained.pth``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detr_ssl.atomic_io import atomic_alias, atomic_write
from detr_ssl.errors import CheckpointError
from detr_ssl.models.checkpoint_io import load_state_dict_file, load_untrusted, state_dict_of
from detr_ssl.models.foreign_checkpoints import convert_foreign_state_dict, is_foreign_layout

LATEST = "checkpoint.pth"
#: What only resuming needs: a training checkpoint without them holds the weights and what describes them.
TRAINING_STATE_KEYS = ("optimizer", "lr_scheduler", "epoch", "step", "batch_in_epoch", "rng", "rng_per_process")
_EPOCH_FILE = re.compile(r"checkpoint_(\d{4,})\.pth$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically and durably (fsync before the rename): a reader, or a crash,
    sees either the old checkpoint or the complete new one, never half of one."""
    atomic_write(path, lambda handle: torch.save(obj, handle), durable=True)


def save_training_checkpoint(state: dict[str, Any], output_dir: Path, epoch: int, keep_last: int) -> Path:
    """Saves ``checkpoint_{epoch:04d}.pth`` and makes ``checkpoint.pth`` (the latest) another name of it,
    prunes older epoch files beyond ``keep_last`` and deletes temporary files that a run killed mid-write
    left behind (they never count as checkpoints: their names start with a dot and end in ``.tmp``).

    The state is serialised and written once: writing the same bytes (the optimizer's moments included) a
    second time doubled the cost of every save, a visible share of a short fine-tune."""
    output_dir = Path(output_dir)
    epoch_path = output_dir / f"checkpoint_{epoch:04d}.pth"
    atomic_torch_save(state, epoch_path)
    atomic_alias(epoch_path, output_dir / LATEST)
    epoch_files = sorted(p for p in output_dir.glob("checkpoint_*.pth") if _EPOCH_FILE.search(p.name))
    for old in epoch_files[: max(0, len(epoch_files) - keep_last)]:
        old.unlink(missing_ok=True)
    for stale in output_dir.glob(".checkpoint*.pth.*.tmp"):  # only this process writes checkpoints here
        stale.unlink(missing_ok=True)
    return epoch_path


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """``None`` -> None; ``'auto'`` -> the latest checkpoint in ``output_dir`` (None if there is none
    yet, so the same command starts or continues a run); a path -> that path, which must exist."""
    if resume is None:
        return None
    if resume == "auto":
        latest = Path(output_dir) / LATEST
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"{path}: --resume checkpoint not found")
    return path


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_training_checkpoint`, validated."""
    state = load_untrusted(path)
    required = {"model", "optimizer", "lr_scheduler", "epoch", "step"}
    if not isinstance(state, dict) or not required <= state.keys():
        missing = sorted(required - set(state)) if isinstance(state, dict) else sorted(required)
        raise CheckpointError(f"{path}: not a detr-ssl training checkpoint (missing {', '.join(missing)})")
    return state


_WRAPPER_PREFIX = "detector."


def _align_prefix(state: dict[str, Any], own_keys: Any) -> dict[str, Any]:
    """Pretext and Pair DETR models hold the Deformable DETR under ``detector.``; a plain detector does
    not. Adds or strips that prefix when doing so makes more of the checkpoint's keys fit the model."""
    own_keys = set(own_keys)
    candidates = [
        state,
        {k.removeprefix(_WRAPPER_PREFIX): v for k, v in state.items()},
        {(k if k.startswith(_WRAPPER_PREFIX) else _WRAPPER_PREFIX + k): v for k, v in state.items()},
    ]
    return max(candidates, key=lambda candidate: len(own_keys & candidate.keys()))


def checkpoint_backbone_norm(checkpoint: Any) -> str | None:
    """The backbone normalisation recorded in one of our loaded checkpoints (``config`` -> ``backbone_norm``,
    at the top for ``pretrained.pth`` or under ``model`` for a training checkpoint); None when the file
    does not say (foreign or plain state dicts)."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        config = config["model"]
    norm = config.get("backbone_norm") if isinstance(config, dict) else None
    return norm if isinstance(norm, str) else None


def load_pretrained(model: nn.Module, path: Path, checkpoint: Any = None) -> tuple[list[str], list[str]]:
    """Initialises ``model`` from a checkpoint non-strictly.

    Accepts our checkpoints (training or ``pretrained.pth``) and the original Deformable DETR / DetReg /
    UP-DETR key layouts (renamed by :mod:`detr_ssl.models.foreign_checkpoints`). Tensors whose shape
    differs from the model's (the class head when the class count changes) are dropped, as are keys the
    model lacks. Returns (missing keys, dropped keys) for reporting; a key that is another name of a
    loaded tensor (a shared head) is not missing.
    """
    state = load_state_dict_file(path) if checkpoint is None else state_dict_of(checkpoint, path)
    if is_foreign_layout(state):
        state = convert_foreign_state_dict(state)
    own = model.state_dict(keep_vars=True)
    state = _align_prefix(state, own.keys())
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise CheckpointError(f"{path}: no tensor in this checkpoint fits the model")
    dropped = sorted(set(state) - set(kept))
    model.load_state_dict(kept, strict=False)
    loaded = {id(own[k]) for k in kept}
    missing = sorted(k for k, tensor in own.items() if k not in kept and id(tensor) not in loaded)
    return missing, dropped


def loaded_parts(model: nn.Module, missing: list[str]) -> dict[str, int]:
    """Tensors :func:`load_pretrained` initialised, counted per top-level module (``backbone``,
    ``input_proj``, ...), in the model's order: what a fine-tune reports it took from a checkpoint."""
    missing_keys = set(missing)
    counts: dict[str, int] = {}
    for key in model.state_dict():
        if key not in missing_keys:
            part = key.removeprefix(_WRAPPER_PREFIX).split(".")[0]
            counts[part] = counts.get(part, 0) + 1
    return counts
