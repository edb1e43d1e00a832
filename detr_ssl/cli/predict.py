"""``scripts/predict.py``: run a trained detector on images; COCO-results JSON plus annotated pictures.

With ``--annotations`` (a COCO JSON of the same images) the detections carry its image ids and are scored
with pycocotools, the same evaluation a fine-tuning run ends with. With ``--query-patch`` a model pretrained
with ``--task updetr`` looks for the regions that resemble the patch instead (UP-DETR's one-shot use).

The detector and evaluation code is imported inside the functions that use it (start-up: see
``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import tyro

from detr_ssl.atomic_io import atomic_write_json
from detr_ssl.cli.common import run_main
from detr_ssl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from detr_ssl.predictor import Detections, Detector

DETECTIONS_FILE = "detections.json"
PICTURES_DIR = "images"


@dataclass(frozen=True)
class PredictConfig:
    """Run a trained detector on images: COCO-results JSON and annotated pictures."""

    checkpoint: Path
    """A fine-tuning checkpoint.pth, or a detector pretext's pretrained.pth (class-agnostic boxes)."""
    images: str
    """An image file, a folder (searched recursively) or a glob pattern such as 'photos/*.jpg'."""
    output_dir: Path = Path("outputs/predict")
    score_threshold: float = 0.0
    """Detections scoring below this are left out of the JSON (0 keeps the top-k, as COCO evaluation wants)."""
    draw_threshold: float = 0.3
    """Detections scoring below this are not drawn."""
    top_k: int = 100
    """Detections kept per image (COCO's maxDets is 100)."""
    batch_size: int | None = None
    """Images per forward pass (default: the batch size the checkpoint's run evaluated with)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    class_agnostic: bool = False
    """Ignore the classes: one 'object' class scored by each query's best class (always on for a pretext)."""
    annotations: Path | None = None
    """COCO JSON of (some of) these images: only the images it lists are run, with its image ids (matched by
    file name), and the detections are scored."""
    query_patch: Path | None = None
    """An image patch to look for (a model pretrained with --task updetr): boxes where it appears."""
    draw: bool = True
    """Write the annotated pictures."""


def resolve_images(spec: str) -> list[Path]:
    """The image files ``spec`` names: a file, a folder (recursively, sorted) or a glob pattern (sorted)."""
    from detr_ssl.datasets import ImageFolderDataset

    path = Path(spec)
    if path.is_dir():
        return ImageFolderDataset(path).image_paths
    if path.is_file():
        return [path]
    matches = sorted(Path(match) for match in glob.glob(spec, recursive=True) if Path(match).is_file())
    if not matches:
        raise DataError(f"{spec}: no such image file or folder, and no file matches it as a pattern")
    return matches


def annotated_images(paths: list[Path], annotations: Path, coco: COCO) -> tuple[list[Path], list[int]]:
    """The ``paths`` that ``annotations`` (read as ``coco``) lists, matched by relative path, else base name,
    with their ids, in ascending id order as evaluation batches them; the others are left out, with a note."""
    by_name: dict[str, int] = {}
    for entry in coco.dataset["images"]:
        by_name[entry["file_name"]] = by_name[Path(entry["file_name"]).name] = int(entry["id"])
    listed = sorted((by_name.get(path.as_posix(), by_name.get(path.name)), path) for path in paths
                    if path.as_posix() in by_name or path.name in by_name)
    if not listed:
        raise DataError(f"{annotations}: lists none of the {len(paths)} images given (matched by file name)")
    if len(listed) < len(paths):
        print(f"{len(paths) - len(listed)} of the {len(paths)} images are not in {annotations}: skipped")
    return [path for _, path in listed], [image_id for image_id, _ in listed]


def _device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return ("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice


def _picture_path(output_dir: Path, image: Path, root: Path | None) -> Path:
    """Where the picture of ``image`` goes: its path under ``root`` (or its name), as JPEG unless it is a PNG."""
    relative = image.relative_to(root) if root is not None else Path(image.name)
    return output_dir / PICTURES_DIR / relative.with_suffix(".png" if image.suffix.lower() == ".png" else ".jpg")


def _draw(image: Path, found: Detections, threshold: float, target: Path) -> None:
    from detr_ssl.datasets.image_io import read_rgb_image
    from detr_ssl.visualize import draw_boxes

    shown = found.above(threshold)
    labels = [f"{name} {score:.2f}" for name, score in zip(shown.names, shown.scores.tolist())]
    target.parent.mkdir(parents=True, exist_ok=True)
    draw_boxes(read_rgb_image(image), shown.boxes.tolist(), labels, shown.labels.tolist()).save(target)


def _score(coco: COCO, detector: Detector, ids: list[int], found: list[Detections]) -> dict[str, float]:
    """COCO box metrics of ``found`` against the ``--annotations`` ``coco`` (class-agnostic: recall
    AR@10/30/100)."""
    from detr_ssl.evaluation import CocoEvaluator

    agnostic = detector.class_agnostic  # label 0 stands for any ground-truth category
    evaluator = CocoEvaluator(coco, coco.getCatIds()[:1] if agnostic else detector.category_ids)
    for image_id, detections in zip(ids, found):
        evaluator.update(image_id, {"scores": detections.scores, "labels": detections.labels,
                                    "boxes": detections.boxes})
    return evaluator.class_agnostic_recall() if agnostic else evaluator.compute()


def predict(cfg: PredictConfig) -> list[dict]:
    """Writes ``detections.json`` (and the pictures, and ``metrics.json`` with --annotations); returns the
    COCO-results entries."""
    from tqdm.auto import tqdm

    from detr_ssl.datasets.image_io import read_rgb_image
    from detr_ssl.evaluation import write_metrics_json
    from detr_ssl.evaluation.coco_eval import load_coco
    from detr_ssl.predictor import Detector

    if cfg.top_k < 1 or cfg.batch_size is not None and cfg.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be positive")
    paths = resolve_images(cfg.images)
    coco = load_coco(cfg.annotations) if cfg.annotations is not None else None
    if coco is not None:
        paths, ids = annotated_images(paths, cfg.annotations, coco)
    else:
        ids = list(range(len(paths)))
    root = Path(cfg.images) if Path(cfg.images).is_dir() else None
    if cfg.query_patch is not None:
        from detr_ssl.query_patch import QueryPatchDetector

        finder = QueryPatchDetector.from_checkpoint(cfg.checkpoint, _device(cfg.device))
        patch = read_rgb_image(cfg.query_patch)
        chunks = ([finder.find(read_rgb_image(path), patch, cfg.top_k)] for path in paths)
        detector = None
    else:
        detector = Detector.from_checkpoint(cfg.checkpoint, _device(cfg.device), batch_size=cfg.batch_size,
                                            class_agnostic=cfg.class_agnostic)
        chunks = detector.predict_batches(paths, cfg.top_k)
    found: list[Detections] = []
    with tqdm(total=len(paths), desc="predict", unit="img") as progress:
        for chunk in chunks:
            found.extend(chunk)
            progress.update(len(chunk))
    results = []
    for path, image_id, detections in zip(paths, ids, found):
        kept = detections.above(cfg.score_threshold)
        results.extend(dict(entry, file_name=str(path)) for entry in kept.to_coco(image_id))
        if cfg.draw:
            _draw(path, detections, cfg.draw_threshold, _picture_path(cfg.output_dir, path, root))
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.output_dir / DETECTIONS_FILE, results)
    print(f"{len(results)} detections on {len(paths)} images written to {cfg.output_dir / DETECTIONS_FILE}"
          + (f"; pictures in {cfg.output_dir / PICTURES_DIR}" if cfg.draw else ""))
    if coco is not None and detector is not None:
        metrics = _score(coco, detector, ids, found)
        write_metrics_json(cfg.output_dir / "metrics.json", metrics)
        print(f"scored against {cfg.annotations}: {json.dumps(metrics)}")
    return results


def main(argv: list[str]) -> int:
    predict(tyro.cli(PredictConfig, args=argv))
    return 0


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(cli())
