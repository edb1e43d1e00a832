"""A detr-ssl detector as a HuggingFace transformers ``DeformableDetrForObjectDetection`` directory.

:func:`export_transformers` writes ``config.json`` and ``model.safetensors`` (loadable offline with
``DeformableDetrForObjectDetection.from_pretrained(out_dir)``: the config builds a timm backbone without
pretrained weights, all weights come from the file) and ``preprocessor_config.json`` for
``DeformableDetrImageProcessor`` / ``AutoImageProcessor``. The tensors are renamed by the inverse of the
reading of transformers checkpoints (:func:`detr_ssl.models.transformers_interop.transformers_state_dict`).

Labels: ``config.id2label`` holds the checkpoint's category names (``class_{i}`` where it records none; a
detector pretext's one class is ``object``), and ``config.category_ids`` the COCO category id of each
label index (None for a pretext), so ``model.config.category_ids[label]`` is what a COCO result file
needs.

Preprocessing: the processor resizes as our evaluation does (short side ``eval_size``, long side at most
``max_size``: the fine-tuning run's evaluation size, a pretext's largest pretraining scale, else the paper's
800 / 1333), bilinear, then scales to [0, 1], normalises with the ImageNet mean and std and zero-pads at the bottom and
right with a pixel mask. One difference remains: where the short side sets the scale, transformers
truncates the long side where we round, so it can come out one pixel shorter than in our evaluation (and
its scores differ very slightly). ``image_processor.post_process_object_detection(outputs,
target_sizes=...)`` then gives the top 100 (query, class) pairs of sigmoid scores with absolute xyxy boxes,
as :func:`detr_ssl.evaluation.postprocess.postprocess` does.

Only the Deformable DETR with a frozen-BN backbone (base, ``with_box_refine``, ``two_stage``) has a
transformers counterpart: a GroupNorm backbone or a Pair DETR is refused with a one-line CheckpointError.
"""

from __future__ import annotations

from pathlib import Path
from detr_ssl.datasets.sizes import PAPER_EVAL_SIZE, PAPER_MAX_SIZE
from detr_ssl.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from detr_ssl.detector import LoadedDetector, load_detector
from detr_ssl.errors import CheckpointError, ConfigError
from detr_ssl.models.deformable_detr import DeformableDETR

__all__ = ["EXPORTED_FILES", "export_transformers", "label_names"]

EXPORTED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
"""What :func:`export_transformers` writes into its directory."""


def label_names(loaded: LoadedDetector, path: Path) -> list[str]:
    """The name of each class index: the checkpoint's category names, ``object`` for a detector pretext's
    one class, else ``class_{i}``."""
    if loaded.category_names is not None:
        if len(loaded.category_names) != loaded.num_classes:
            raise CheckpointError(f"{path}: {len(loaded.category_names)} category names for "
                                  f"{loaded.num_classes} classes")
        return list(loaded.category_names)
    if loaded.task is not None and loaded.num_classes == 1:
        return ["object"]
    return [f"class_{index}" for index in range(loaded.num_classes)]


def _refuse_foreign_architectures(loaded: LoadedDetector, path: Path) -> DeformableDETR:
    model = loaded.model
    if not isinstance(model, DeformableDETR):
        raise CheckpointError(f"{path}: a {type(model).__name__} detector has no transformers counterpart "
                              f"(only Deformable DETR can be exported)")
    if model.config.backbone_norm != "frozen_bn":
        raise CheckpointError(f"{path}: its backbone uses {model.config.backbone_norm}; transformers' Deformable "
                              f"DETR has a frozen-BN backbone only, so this detector cannot be exported")
    return model


def export_transformers(checkpoint_path: Path, out_dir: Path) -> Path:
    """Writes the detector in ``checkpoint_path`` (a fine-tuning ``checkpoint.pth`` or a detector pretext's
    ``pretrained.pth``) to ``out_dir`` as a transformers model directory (:data:`EXPORTED_FILES`); returns
    ``out_dir``.

    Raises:
        CheckpointError: naming the file, when it holds no detector, or one transformers cannot express.
        ConfigError: when transformers is not installed or ``out_dir`` is not a directory.
    """
    path, out_dir = Path(checkpoint_path), Path(out_dir)
    try:
        from transformers import DeformableDetrImageProcessor

        from detr_ssl.models.transformers_interop import build_transformers_detector, transformers_state_dict
    except ImportError as error:
        raise ConfigError(f"exporting to transformers needs the transformers package ({error})") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory")
    loaded = load_detector(path)
    ours = _refuse_foreign_architectures(loaded, path)
    names = label_names(loaded, path)
    theirs = build_transformers_detector(ours.config, loaded.num_classes)
    try:
        theirs.load_state_dict(transformers_state_dict(ours, theirs))
    except ValueError as error:
        raise CheckpointError(f"{path}: this detector has no transformers counterpart ({error})") from None
    theirs.config.id2label = dict(enumerate(names))
    theirs.config.label2id = {name: index for index, name in enumerate(names)}
    theirs.config.category_ids = loaded.category_ids
    short_side, max_size = loaded.input_size or (PAPER_EVAL_SIZE, PAPER_MAX_SIZE)
    processor = DeformableDetrImageProcessor(size={"shortest_edge": short_side, "longest_edge": max_size},
                                             image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    out_dir.mkdir(parents=True, exist_ok=True)
    theirs.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
