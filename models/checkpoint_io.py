"""Reading weight files that users hand us: always ``weights_only=True``, always a clear error."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from detr_ssl.atomic_io import atomic_write
from detr_ssl.errors import CheckpointError


SAFETENSORS_SUFFIX = ".safetensors"
_METADATA_KEY = "detr_ssl"
"""The safetensors metadata entry holding a checkpoint's non-tensor entries as JSON."""
_SEPARATOR = "/"
"""Joins the nesting of a checkpoint's entries into one safetensors key (state-dict keys hold dots)."""


def load_untrusted(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU, or a ``.safetensors`` file read back into the
    checkpoint it was written from (:func:`save_safetensors`); a missing, corrupt or non-checkpoint file
    and a pickle payload (a blocked class or function) each become a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a class or function the unpickler blocks
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects beyond tensors and plain containers "
                f"(weights_only=True); re-save it as a plain state dict"
            ) from exc
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint") from exc
    except Exception as exc:  # a corrupt file can fail anywhere inside the unpickler (IndexError, ...)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {detail})") from exc


def save_safetensors(checkpoint: dict[str, Any], path: Path) -> None:
    """Writes a weights-only checkpoint (tensors in nested dicts, other entries JSON-serialisable) as
    safetensors, atomically: the tensors under their nesting joined by ``/`` (``model/backbone.body.conv1.
    weight``), every other entry as JSON in the file's metadata. :func:`load_untrusted` reads it back."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}

    def split(node: dict[str, Any], prefix: str) -> dict[str, Any]:
        rest = {}
        for key, value in node.items():
            if _SEPARATOR in key:
                raise ValueError(f"checkpoint key {key!r} holds {_SEPARATOR!r}, which safetensors keys nest by")
            if isinstance(value, torch.Tensor):
                tensors[prefix + key] = value.detach().cpu().contiguous().clone()  # unshared, as safetensors needs
            elif isinstance(value, dict) and value:
                inner = split(value, prefix + key + _SEPARATOR)
                if inner or not any(name.startswith(prefix + key + _SEPARATOR) for name in tensors):
                    rest[key] = inner
            else:
                rest[key] = value
        return rest

    metadata = {_METADATA_KEY: json.dumps(split(checkpoint, ""))}
    atomic_write(path, lambda handle: handle.write(save(tensors, metadata=metadata)), durable=True)


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        tensors = load(data)
        header_length = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_length]).get("__metadata__") or {}
        checkpoint = json.loads(metadata.get(_METADATA_KEY, "{}"))
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    if not tensors and not checkpoint:
        raise CheckpointError(f"{path}: an empty safetensors file")
    if _METADATA_KEY not in metadata:  # a plain state dict written by another tool
        return tensors
    for name, tensor in tensors.items():
        *parents, leaf = name.split(_SEPARATOR)
        node = checkpoint
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = tensor
    return checkpoint


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file holding either the dict itself or a checkpoint with a ``model`` /
    ``state_dict`` entry."""
    return state_dict_of(load_untrusted(path), path)


def state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside an already loaded file ``path`` (see :func:`load_state_dict_file`)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor)")
    return obj


#: Where a ResNet trunk's tensors sit in the files we accept, outermost first: DDP's wrapper, our
#: detector (``backbone.body.``) and the original DETR family's (``backbone.0.body.``).
_TRUNK_PREFIXES = ("module.", "backbone.0.body.", "backbone.body.")


def trunk_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the trunk prefixes removed, so a ResNet's tensors carry torchvision names
    (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...) whichever file they came from."""
    renamed = {}
    for key, value in state.items():
        for prefix in _TRUNK_PREFIXES:
            key = key.removeprefix(prefix)
        renamed[key] = value
    return renamed
