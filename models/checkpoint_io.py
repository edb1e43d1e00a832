"""Reading weight files that users hand us: always ``weights_only=True``, always a clear error."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from detr_ssl.errors import CheckpointError


def load_untrusted(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; a missing, corrupt or non-checkpoint file and a
    pickle payload (a blocked class or function) each become a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
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
