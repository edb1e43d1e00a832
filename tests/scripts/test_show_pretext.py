"""UP-DETR query-patch detection and scripts/show_pretext.py (DetReg proposals, UP-DETR patches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ssl.cli.common import run_main
from detr_ssl.cli.show_pretext import main as show_main
from detr_ssl.config import to_plain
from detr_ssl.errors import CheckpointError
from detr_ssl.models.config import model_preset
from detr_ssl.models.crops import crop_and_resize
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.predictor import prepare_image
from detr_ssl.query_patch import QueryPatchDetector, patch_search_hits
from detr_ssl.tasks.updetr import UpDetrTask


def _picture(seed: int, size: tuple[int, int] = (160, 128)) -> Image.Image:
    """Smooth random colours (an 8 x 10 grid enlarged): a photo-like image, not pixel noise."""
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def updetr_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A demo-preset UP-DETR (random weights) exported as pretraining exports it."""
    task = UpDetrTask(UpDetrTask.configure(UpDetrTask.preset_config("demo")))
    torch.manual_seed(0)
    model = task.build_model().eval()
    out = tmp_path_factory.mktemp("updetr")
    task.export(model, out)
    return out / "pretrained.pth", model


def test_a_query_patch_is_encoded_as_pretraining_encodes_its_box(updetr_export) -> None:
    path, model = updetr_export
    finder = QueryPatchDetector.from_checkpoint(path)
    image = _picture(0)  # 160 x 128: the demo's input size already, so the evaluation resize keeps it
    box = (16, 24, 80, 72)
    pixels, _ = prepare_image(image, finder.transforms)
    assert pixels.shape[1:] == (128, 160)
    in_pretraining = model.encode_patches(
        crop_and_resize(pixels[None], [torch.tensor([box], dtype=torch.float32)], finder.patch_size))[0]
    # Only the samples at the patch's edge differ: pretraining interpolates with the pixels around the box.
    query = finder.encode_patch(image.crop(box))
    torch.testing.assert_close(query, in_pretraining, atol=1e-2, rtol=0)
    elsewhere = finder.encode_patch(image.crop((90, 10, 150, 70)))
    assert (elsewhere - in_pretraining).abs().max() > 10 * (query - in_pretraining).abs().max()


def test_every_query_group_looks_for_the_patch(updetr_export) -> None:
    path, model = updetr_export
    finder = QueryPatchDetector.from_checkpoint(path)
    image, patch = _picture(1), _picture(2, (40, 30))
    found = finder.find(image, patch, top_k=5)
    assert len(found) == 5 and set(found.names) == {"patch"}
    feature = finder.encode_patch(patch)
    pixels, _ = prepare_image(image, finder.transforms)
    with torch.no_grad():
        output, _ = model(pixels[None], torch.zeros(1, *pixels.shape[1:], dtype=torch.bool),
                          feature.expand(1, finder.num_patches, -1), finder.groups)
    assert torch.isclose(found.scores[0], output.logits.sigmoid().max())
    searches = patch_search_hits(finder, [image, _picture(3)], patches_per_image=2)
    assert len(searches) == 4 and all(0.0 <= search.iou <= 1.0 for search in searches)


def test_only_an_updetr_export_finds_patches(tmp_path: Path) -> None:
    model = build_model(model_preset("tiny"), num_classes=1)
    path = tmp_path / "pretrained.pth"
    torch.save({"model": model.state_dict(), "task": "detreg", "config": to_plain(model.config)}, path)
    with pytest.raises(CheckpointError, match="pretrained.pth: query-patch detection needs"):
        QueryPatchDetector.from_checkpoint(path)


def test_show_pretext_draws_targets_beside_predictions(updetr_export, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(3):
        _picture(seed).save(images / f"{seed}.png")
    model = build_model(model_preset("tiny"), num_classes=1)
    detreg = tmp_path / "detreg.pth"
    torch.save({"model": model.state_dict(), "task": "detreg", "config": to_plain(model.config),
                "input_size": [128, 213]}, detreg)
    argv = ["--images", str(images), "--count", "2", "--output"]
    assert run_main(show_main, ["--checkpoint", str(detreg), *argv, str(tmp_path / "detreg.png")]) == 0
    with Image.open(tmp_path / "detreg.png") as drawn:
        assert drawn.height > 2 * 307 and drawn.width > 2 * 384  # two rows of two panels enlarged to 384 x 307
    updetr, _ = updetr_export
    assert run_main(show_main, ["--checkpoint", str(updetr), *argv, str(tmp_path / "updetr.png")]) == 0
    assert "patches found again (IoU >= 0.5):" in capsys.readouterr().out and (tmp_path / "updetr.png").is_file()
    swav = tmp_path / "swav.pth"
    torch.save({"model": {}, "task": "swav", "config": {}}, swav)
    assert run_main(show_main, ["--checkpoint", str(swav), *argv, str(tmp_path / "swav.png")]) == 2
    assert "swav.pth: not the pretrained.pth of a detector pretext" in capsys.readouterr().err
