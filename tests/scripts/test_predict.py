"""scripts/predict.py and scripts/plot_run.py on a fine-tuned demo run: the detections a run was scored with,
pictures of them, and the run's curves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from detr_ssl.cli.common import run_main
from detr_ssl.cli.finetune import finetune
from detr_ssl.cli.plot_run import PlotRunConfig, panels, plot_run, read_scalars
from detr_ssl.cli.predict import DETECTIONS_FILE, PICTURES_DIR
from detr_ssl.cli.predict import main as predict_main
from detr_ssl.config import demo_finetune
from detr_ssl.datasets.demo import DemoPaths
from detr_ssl.errors import DataError
from detr_ssl.predictor import AGNOSTIC_NAME, Detector

VAL_IMAGES = 6


@pytest.fixture(scope="module")
def finetuned(demo_data: DemoPaths, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A demo fine-tune of 4 steps evaluated on the first val images: (run dir, its val JSON)."""
    root = tmp_path_factory.mktemp("predict")
    document = json.loads(demo_data.val_json.read_text())
    document["images"] = document["images"][:VAL_IMAGES]
    kept = {image["id"] for image in document["images"]}
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in kept]
    val_json = root / "val.json"
    val_json.write_text(json.dumps(document))
    base = demo_finetune()
    cfg = replace(base, data=replace(base.data, train_json=demo_data.train_json, val_json=val_json,
                                     images=demo_data.image_dir),
                  optim=replace(base.optim, epochs=1, batch_size=4),
                  run=replace(base.run, output_dir=root / "run", max_steps=4, log_every=1))
    finetune(cfg)
    return root / "run", val_json


def test_predicting_the_val_images_reproduces_the_runs_metrics(finetuned: tuple[Path, Path], demo_data: DemoPaths,
                                                               tmp_path: Path) -> None:
    run, val_json = finetuned
    out = tmp_path / "predict"
    argv = ["--checkpoint", str(run / "checkpoint.pth"), "--images", str(demo_data.image_dir),
            "--annotations", str(val_json), "--output-dir", str(out)]
    assert run_main(predict_main, argv) == 0
    expected = json.loads((run / "metrics.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == expected
    detections = json.loads((out / DETECTIONS_FILE).read_text())
    assert len(detections) == VAL_IMAGES * 100  # top-100 per image, no threshold by default
    names = {entry["category_name"] for entry in detections}
    document = json.loads(val_json.read_text())
    assert names <= {category["name"] for category in document["categories"]}
    assert {entry["image_id"] for entry in detections} == {image["id"] for image in document["images"]}
    pictures = sorted((out / PICTURES_DIR).iterdir())
    assert len(pictures) == VAL_IMAGES
    with Image.open(pictures[0]) as picture:
        assert max(picture.size) >= 384  # enlarged so that the tags are legible


def test_the_api_ranks_filters_and_can_ignore_classes(finetuned: tuple[Path, Path], demo_data: DemoPaths) -> None:
    run, _ = finetuned
    image = sorted(demo_data.image_dir.glob("val_*"))[0]
    detector = Detector.from_checkpoint(run / "checkpoint.pth")
    found = detector.predict(image, top_k=20)[0]
    assert len(found) == 20 and bool((found.scores[:-1] >= found.scores[1:]).all())
    width, height = Image.open(image).size
    assert float(found.boxes[:, 0::2].min()) >= -1 and float(found.boxes[:, 0::2].max()) <= width + 1
    assert float(found.boxes[:, 1::2].max()) <= height + 1
    threshold = float(found.scores[5])
    assert len(detector.predict([image], top_k=20, score_threshold=threshold)[0]) == 6
    agnostic = Detector.from_checkpoint(run / "checkpoint.pth", class_agnostic=True).predict(image, top_k=20)[0]
    assert set(agnostic.names) == {AGNOSTIC_NAME} and set(agnostic.labels.tolist()) == {0}
    # Class-agnostic scores are each query's best class: the top one is the class-aware top score.
    assert torch.isclose(agnostic.scores[0], found.scores[0])


def test_bad_images_and_patterns_are_named(finetuned: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = finetuned
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    checkpoint = ["--checkpoint", str(run / "checkpoint.pth"), "--output-dir", str(tmp_path / "out")]
    assert run_main(predict_main, [*checkpoint, "--images", str(broken)]) == 2
    assert "broken.jpg: not a readable image file" in capsys.readouterr().err
    assert run_main(predict_main, [*checkpoint, "--images", str(tmp_path / "none" / "*.png")]) == 2
    assert "no file matches it as a pattern" in capsys.readouterr().err
    trunk = tmp_path / "trunk.pth"
    torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(1)}, "task": "swav", "config": {}}, trunk)
    assert run_main(predict_main, ["--checkpoint", str(trunk), "--images", str(broken)]) == 2
    assert "trunk.pth: holds no detector" in capsys.readouterr().err


def test_plot_run_draws_the_runs_scalars(finetuned: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = finetuned
    series = read_scalars(run / "scalars.csv")
    layout = panels(series, aux=False)
    assert set(layout) == {"loss", "learning rate", "validation (%)", "other"}
    assert "val/AP" in layout["validation (%)"] and "train/grad_norm" in layout["other"]
    assert series["val/AP"][0] == [4]  # the run stopped by --max-steps is evaluated where it stopped
    assert "train/loss_bbox" in layout["loss"] and not any(tag.endswith("_0") for tag in layout["loss"])
    assert any(tag.endswith("_0") for tag in panels(series, aux=True)["loss"])
    output = plot_run(PlotRunConfig(run, output=tmp_path / "curves.png"))
    with Image.open(output) as picture:
        assert picture.format == "PNG" and picture.size[0] > 600


def test_plot_run_names_a_file_that_is_not_a_scalars_log(tmp_path: Path) -> None:
    (tmp_path / "scalars.csv").write_text("epoch,loss\n1,2\n")
    with pytest.raises(DataError, match="scalars.csv: expected the columns step,tag,value"):
        read_scalars(tmp_path / "scalars.csv")
    with pytest.raises(DataError, match="not found"):
        read_scalars(tmp_path / "elsewhere" / "scalars.csv")
