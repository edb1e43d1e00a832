"""A trained detector as an ONNX graph, dynamic in batch size and image height and width.

The graph takes what the PyTorch detector takes, a padded batch, and returns its raw predictions:

- inputs ``images`` ``(B, 3, H, W)`` float32, normalised as for training, and ``padding_mask`` ``(B, H, W)``
  bool, True on padding;
- outputs ``logits`` ``(B, Q, C)`` and ``boxes`` ``(B, Q, 4)``, the fields of `DetectionOutput` (boxes cxcywh
  normalised to each image's unpadded area). Post-processing stays in Python: `OnnxDetector` returns a
  `DetectionOutput` for `detr_ssl.evaluation.postprocess`, the same path as evaluation.

``torch.export`` traces the model symbolically in B, H and W with multi-scale deformable attention in its
export formulation (`detr_ssl.models.msda.dispatch.export_mode`: gathers, no ``grid_sample``), and
``torch.onnx`` translates the program (that needs the ``onnx`` and ``onnxscript`` packages; running the
graph needs ``onnxruntime``). Images must be at least `min_image_size` pixels high and wide: the tracer
assumes every feature map has two pixels or more.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detr_ssl.datasets.collate import Batch
from detr_ssl.detector import load_detector
from detr_ssl.engine.evaluate import Detect, run_detector
from detr_ssl.errors import ConfigError
from detr_ssl.models.deformable_detr import DeformableDETR
from detr_ssl.models.msda.dispatch import export_mode
from detr_ssl.models.outputs import DetectionOutput

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "OnnxDetector", "export_model", "export_onnx", "max_onnx_difference",
           "min_image_size"]

INPUT_NAMES = ("images", "padding_mask")
OUTPUT_NAMES = ("logits", "boxes")


def _require(*modules: str) -> None:
    """ConfigError naming the missing packages (optional dependencies, the ``onnx`` extra)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'detr-ssl[onnx]' "
                          f"(or pip install {' '.join(missing)})")


class _Predictions(nn.Module):
    """``detect`` as a module of tensors: a padded batch in, ``(logits, boxes)`` out (graph outputs are tensors)."""

    def __init__(self, model: nn.Module, detect: Detect) -> None:
        super().__init__()
        self.model = model
        self.detect = detect

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        output = self.detect(self.model, Batch(images=images, mask=padding_mask, targets=[]))
        return output.logits, output.boxes


def _nearest_sources(in_size: Any, out_size: Any) -> Any:
    """PyTorch's source index of each output index of a nearest resize, in PyTorch's float32 arithmetic:
    ``min(floor(i * (in / out)), in - 1)`` (ONNX's Resize computes ``i / (out / in)``, which rounds
    differently: 90 -> 6 rows reads row 44 instead of 45)."""
    from onnxscript import FLOAT, INT64
    from onnxscript import opset18 as op

    scale = op.Div(op.Cast(in_size, to=FLOAT.dtype), op.Cast(out_size, to=FLOAT.dtype))
    positions = op.Cast(op.Range(op.Constant(value_int=0), out_size, op.Constant(value_int=1)), to=FLOAT.dtype)
    sources = op.Cast(op.Floor(op.Mul(positions, scale)), to=INT64.dtype)
    return op.Min(sources, op.Sub(in_size, op.Constant(value_int=1)))


def _upsample_nearest2d_as_torch(self: Any, output_size: Any, scale_factors: Any = None) -> Any:
    """``aten.upsample_nearest2d.vec`` (how the model resizes its padding mask to each feature map) as two
    Gathers at `_nearest_sources`: torch.onnx's translation, a Resize, marks other pixels as padding."""
    from onnxscript import opset18 as op

    if scale_factors is not None:
        raise NotImplementedError("only nearest resizes to a given size are translated")
    shape, size = op.Shape(self), output_size
    rows = _nearest_sources(op.Gather(shape, op.Constant(value_int=2)), op.Gather(size, op.Constant(value_int=0)))
    columns = _nearest_sources(op.Gather(shape, op.Constant(value_int=3)), op.Gather(size, op.Constant(value_int=1)))
    return op.Gather(op.Gather(self, rows, axis=2), columns, axis=3)


def min_image_size(model: nn.Module) -> int:
    """The smallest height and width the exported graph takes: one more than the stride of the deepest
    feature map, so that it has at least two pixels."""
    detector = next((m for m in model.modules() if isinstance(m, DeformableDETR)), None)
    if detector is None:
        raise ValueError(f"{type(model).__name__} holds no DeformableDETR")
    strides = detector.backbone.strides
    extra_levels = len(detector.input_proj) - len(strides)  # each halves the one before
    return strides[-1] * 2**extra_levels + 1


def export_model(model: nn.Module, out_path: Path, opset: int | None = None, detect: Detect = run_detector) -> Path:
    """Export ``model`` (in eval mode, on CPU) to ``out_path``; see the module docstring for the graph.

    Args:
        model: a detector whose ``detect(model, batch)`` is a `DetectionOutput` (a `DeformableDETR` with the
            default ``detect``; Pair DETR with its task's).
        opset: ONNX opset, 18 or newer (default: torch's, 20 with torch 2.14).
        detect: how a batch becomes detections.

    Returns:
        ``out_path``, checked with ``onnx.checker``.
    """
    _require("onnx", "onnxscript")
    import onnx
    import onnxscript.optimizer

    if opset is not None and opset < 18:
        # torch writes opset 18 and has onnx's version converter go lower, which breaks this graph (ReduceProd)
        raise ConfigError(f"opset {opset} is not supported: the ONNX export writes opset 18 or newer")
    model = model.eval()
    smallest = min_image_size(model)
    # Example sizes only steer the trace: several pixels on every level, height != width (no coincidences).
    images = torch.randn(2, 3, 3 * smallest, 4 * smallest)
    padding_mask = torch.zeros(2, 3 * smallest, 4 * smallest, dtype=torch.bool)
    padding_mask[1, 2 * smallest:] = True  # the second image smaller, as in a padded batch
    padding_mask[1, :, 3 * smallest:] = True
    batch = torch.export.Dim("batch")
    height, width = (torch.export.Dim(name, min=smallest) for name in ("height", "width"))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Not torch's optimize=True: onnxscript 0.7's rewrite rules (FuseSuccessiveClip, on inverse_sigmoid's two
    # clamps) leave a Clip reading bounds that no node produces, a file onnx.checker refuses. Constant folding
    # alone also turns the sequence ops of torch.split (SplitToSequence, which TensorRT lacks) into Split.
    with export_mode(), torch.no_grad(), warnings.catch_warnings():
        # (images and padding_mask share their axes, which torch.onnx reports while naming them as asked)
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        program = torch.onnx.export(
            _Predictions(model, detect).eval(), (images, padding_mask), input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=True, verbose=False, optimize=False,
            custom_translation_table={torch.ops.aten.upsample_nearest2d.vec: _upsample_nearest2d_as_torch},
            dynamic_shapes={"images": {0: batch, 2: height, 3: width},
                            "padding_mask": {0: batch, 1: height, 2: width}},
        )
    onnxscript.optimizer.fold_constants(program.model)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    program.save(str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)
    return out_path


def export_onnx(checkpoint_path: Path, out_path: Path, opset: int | None = None) -> Path:
    """The detector of ``checkpoint_path`` (a fine-tuning ``checkpoint.pth`` or a detector pretext's
    ``pretrained.pth``, read by `load_detector`) exported to ``out_path`` by `export_model`.

    Raises:
        CheckpointError: naming the file, when it holds no detector.
        ConfigError: onnx or onnxscript is not installed, or ``opset`` is below 18.
    """
    _require("onnx", "onnxscript")  # before reading a large checkpoint
    loaded = load_detector(Path(checkpoint_path), "cpu")
    return export_model(loaded.model, out_path, opset, loaded.detect)


class OnnxDetector:
    """An exported graph run by onnxruntime on CPU, called like the PyTorch detector.

    >>> detector = OnnxDetector(Path("model.onnx"))  # doctest: +SKIP
    >>> detections = postprocess(detector(images, padding_mask), orig_sizes)  # doctest: +SKIP
    """

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        _require("onnxruntime")
        import onnxruntime

        self.session: Any = onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])

    def __call__(self, images: Tensor, padding_mask: Tensor) -> DetectionOutput:
        feeds = {"images": images.detach().cpu().float().numpy(),
                 "padding_mask": padding_mask.detach().cpu().to(torch.bool).numpy()}
        logits, boxes = self.session.run(list(OUTPUT_NAMES), feeds)
        return DetectionOutput(logits=torch.from_numpy(logits), boxes=torch.from_numpy(boxes))


def max_onnx_difference(model: nn.Module, onnx_path: Path, detect: Detect = run_detector, batch: int = 2,
                        size: tuple[int, int] | None = None, seed: int = 0) -> dict[str, float]:
    """Largest absolute difference of each output between ``model`` and its exported graph on one random
    padded batch (the last image padded on the right and bottom), ``{"logits": ..., "boxes": ...}``.

    ``size`` (H, W) defaults to a size the export did not trace with.
    """
    model = model.eval()
    smallest = min_image_size(model)
    height, width = size or (4 * smallest + 5, 3 * smallest + 7)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=generator)
    padding_mask = torch.zeros(batch, height, width, dtype=torch.bool)
    padding_mask[-1, height - height // 4:] = True
    padding_mask[-1, :, width - width // 3:] = True
    images = images.masked_fill(padding_mask[:, None], 0.0)
    with torch.no_grad():
        expected = detect(model, Batch(images=images, mask=padding_mask, targets=[]))
    got = OnnxDetector(onnx_path)(images, padding_mask)
    return {name: float((getattr(got, name) - getattr(expected, name)).abs().max()) for name in OUTPUT_NAMES}

