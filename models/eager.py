"""Whether a module's forward runs eagerly, or is being recorded into a graph."""

from __future__ import annotations

import torch


def running_eagerly() -> bool:
    """False while torch.compile, torch.export or a TorchScript/ONNX trace records the model: CPU shortcuts
    that only pay off eagerly step aside, and the recorders see the plain modules (and do their own fusions)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())
