"""Bad input, class by class, through the public entry points.

Every class gets either one line naming the file and the problem (a `DataError`; exit status 2 from the
scripts), or a documented skip that is counted in a summary, never a traceback from deep inside a
DataLoader worker. Unusual but valid input (odd pixel formats, extreme aspect ratios, images without boxes,
more boxes than queries) trains.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from detr_ssl.cli import finetune, validate_dataset
from detr_ssl.cli import precompute_proposals as precompute_cli
from detr_ssl.cli.common import run_main
from detr_ssl.config import LossConfig, PairConfig, demo_finetune
from detr_ssl.datasets import CocoDetection, ImageFolderDataset, collate_detection, make_train_transforms
from detr_ssl.datasets.sizes import DEMO_CROP, DEMO_MAX_SIZE, DEMO_TRAIN_SCALES, PAPER_MAX_SIZE
from detr_ssl.datasets.transforms import PRE_CROP_MAX_SIZE_FACTOR, make_eval_transforms
from detr_ssl.errors import DataError
from detr_ssl.models.config import model_preset
from detr_ssl.tasks.supervised import build_supervised

Document = dict[str, list[dict[str, Any]]]


def _demo_transforms() -> Any:
    return make_train_transforms(DEMO_TRAIN_SCALES, DEMO_MAX_SIZE, DEMO_CROP)


def _error_from_workers(dataset: Any) -> DataError:
    """Iterates the dataset the way training does (2 worker processes, shuffled batches); returns the
    DataError that a worker raised and the loader re-raised here."""
    loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate_detection,
                        generator=torch.Generator().manual_seed(0))
    try:
        for _ in loader:
            pass
    except DataError as error:
        # Break the cycle error <-> traceback (which holds the loader): a loader left to the garbage
        # collector stalls 5 s per worker while shutting down.
        error.__traceback__ = None
        return error
    raise AssertionError("no DataError from the workers")


def _cli_error(main: Callable[[list[str]], int], args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs a script's main like the script does; returns its one stderr line (exit status 2 required)."""
    code = run_main(main, args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    final = err.splitlines()[-1]  # a progress bar may have been drawn before the failure
    assert final.startswith("error: "), err
    return final


def _finetune_args(files: Any, tmp_path: Path, *extra: str) -> list[str]:
    return ["--preset", "demo", "--train-json", str(files.annotation_file), "--val-json", str(files.annotation_file),
            "--images", str(files.image_dir), "--output-dir", str(tmp_path / "out"), "--epochs", "1", *extra]


def _validate_args(files: Any) -> list[str]:
    return ["--annotations", str(files.annotation_file), "--images", str(files.image_dir)]


# -- 1. truncated, corrupt and missing image files -----------------------------------------------------
def _noise_image(path: Path, size: tuple[int, int], fmt: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def _truncate(fmt: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        _noise_image(path, (64, 48), fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return damage


#: How to damage ``a.png`` (declared 64x48) -> what the message must say; and whether a folder of
#: unlabeled images (which has no declared sizes) notices it too.
_BROKEN_IMAGES: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "truncated png": (_truncate("PNG"), "corrupt or truncated image", True),
    "truncated jpeg": (_truncate("JPEG"), "corrupt or truncated image", True),
    "not an image": (lambda p: p.write_text("<html>404</html>"), "not a readable image file", True),
    "empty file": (lambda p: p.write_bytes(b""), "not a readable image file", True),
    "missing": (lambda p: p.unlink(), "image file not found", False),
    "wrong size": (lambda p: _noise_image(p, (48, 64), "PNG"), "image is 48x64 pixels but .* declares 64x48", False),
}


@pytest.mark.parametrize("case", list(_BROKEN_IMAGES))
def test_a_broken_image_file_is_one_line_naming_it_at_every_entry_point(
    case: str, tiny_coco: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, problem, folder_notices = _BROKEN_IMAGES[case]
    image = tiny_coco.image_dir / "a.png"
    damage(image)
    expected = f"{re.escape(str(image))}: {problem}"

    dataset = CocoDetection(tiny_coco.annotation_file, tiny_coco.image_dir, _demo_transforms())
    with pytest.raises(DataError, match=expected):
        dataset[0]
    in_worker = _error_from_workers(dataset)
    assert in_worker.worker_traceback is not None and "Traceback" in in_worker.worker_traceback
    assert re.fullmatch(expected + ".*", str(in_worker))  # one line, no worker traceback

    assert run_main(validate_dataset.main, _validate_args(tiny_coco)) == 1
    report = capsys.readouterr().out
    assert "checked 3 image(s), 1 problem(s)" in report
    assert re.search(expected, report)

    line = _cli_error(finetune.main, _finetune_args(tiny_coco, tmp_path, "--num-workers", "2"), capsys)
    assert re.fullmatch(f"error: {expected}.*", line), line

    if folder_notices:  # unlabeled images for pretraining: an error on access, a counted skip in precompute
        folder = ImageFolderDataset(tiny_coco.image_dir)
        with pytest.raises(DataError, match=expected):
            folder[folder.image_paths.index(image)]
        cache_args = ["--images", str(tiny_coco.image_dir), "--cache", str(tmp_path / "cache"), "--workers", "1",
                      "--no-progress", "--top-k", "5"]
        assert run_main(precompute_cli.main, cache_args) == 1
        summary = capsys.readouterr().out
        assert "3 image(s): 2 computed, 0 already cached, 1 failed" in summary
        assert re.search(f"failed: {expected}", summary)



def test_a_failed_run_leaves_no_loader_worker_behind(tiny_coco: Any, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The error a worker raised holds the loader in a reference cycle; the script frees it at once instead
    of leaving its worker processes to the garbage collector (whose late shutdown stalls 5 s per worker)."""
    (tiny_coco.image_dir / "b.png").unlink()
    gc.collect()
    gc.disable()
    try:
        _cli_error(finetune.main, _finetune_args(tiny_coco, tmp_path, "--num-workers", "2"), capsys)
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()

# -- 2. malformed COCO JSON: syntax, missing keys, wrong types --------------------------------------------
def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


def _edit(change: Callable[[Document], Any]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))

    return write


#: How to break the annotation file -> what the message must say (after "<file>: "); and whether the
#: problem is in the ``images`` part, which pretraining on a JSON's images reads too.
_BAD_JSON: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "syntax error": (lambda p: p.write_text(p.read_text()[:-7]), r"invalid JSON at line 1, column \d+", True),
    "empty file": (_text(""), "invalid JSON at line 1, column 1", True),
    "not utf-8": (lambda p: p.write_bytes(b'{"images": "\xff\xfe"}'), "cannot read annotation file", True),
    "not an object": (_text("[]"), "expected a JSON object at the top level, found a list", True),
    "missing images": (_edit(lambda d: d.pop("images")), "missing top-level key.* 'images'", True),
    "missing categories": (_edit(lambda d: d.pop("categories")), "missing top-level key.* 'categories'", False),
    "annotations not a list": (_edit(lambda d: d.update(annotations={})),
                               "'annotations' must be a list, found an object", False),
    "image without file_name": (_edit(lambda d: d["images"][1].pop("file_name")),
                                r"images\[1\] \(id 11\): 'file_name' must be a non-empty string", True),
    "width as a string": (_edit(lambda d: d["images"][0].update(width="64")),
                          r"images\[0\]: 'width' must be an integer, found a string '64'", True),
    "annotation without bbox": (_edit(lambda d: d["annotations"][0].pop("bbox")), "annotation id 1: missing 'bbox'",
                                False),
    "bbox of strings": (_edit(lambda d: d["annotations"][0].update(bbox=["4", "6", "20", "10"])),
                        "annotation id 1: 'bbox' must be 4 finite numbers", False),
    "bbox with NaN": (_edit(lambda d: d["annotations"][0].update(bbox=[4, 6, float("nan"), 10])),
                      "annotation id 1: 'bbox' must be 4 finite numbers", False),
    "category id as a string": (_edit(lambda d: d["categories"][0].update(id="9")),
                                r"categories\[0\]: 'id' must be an integer", False),
    "no categories": (_edit(lambda d: d.update(categories=[])), "'categories' is empty", False),
    "unknown image id": (_edit(lambda d: d["annotations"][0].update(image_id=99)),
                         "annotation id 1: unknown image_id 99", False),
    "duplicate image id": (_edit(lambda d: d["images"][1].update(id=10)), "duplicate image id 10", True),
}


@pytest.mark.parametrize("case", list(_BAD_JSON))
def test_malformed_coco_json_is_one_line_naming_the_file_and_the_problem(
    case: str, tiny_coco: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, problem, in_images = _BAD_JSON[case]
    damage(tiny_coco.annotation_file)
    expected = f"{re.escape(str(tiny_coco.annotation_file))}: .*{problem}"

    with pytest.raises(DataError) as error:
        CocoDetection(tiny_coco.annotation_file, tiny_coco.image_dir)
    assert re.fullmatch(expected + ".*", str(error.value)), str(error.value)
    for main, args in ((validate_dataset.main, _validate_args(tiny_coco)),
                       (finetune.main, _finetune_args(tiny_coco, tmp_path))):
        line = _cli_error(main, args, capsys)
        assert re.fullmatch(f"error: {expected}.*", line), line
    if in_images:  # pretraining on the JSON's images reads only its 'images' list (annotations are ignored)
        with pytest.raises(DataError, match=expected):
            ImageFolderDataset(tiny_coco.annotation_file, image_dir=tiny_coco.image_dir)
    else:
        assert len(ImageFolderDataset(tiny_coco.annotation_file, image_dir=tiny_coco.image_dir)) == 3


# -- 3. boxes with zero or negative size, or outside the image ----------------------------------------------
#: bbox given to annotation 2 (image 10, 64x48) -> the problem named; None: valid (clipped to the image).
_BOXES: dict[str, tuple[list[float], str | None]] = {
    "zero width": ([30, 20, 0, 20], r"bbox has zero or negative size \(width 0, height 20\)"),
    "negative height": ([30, 20, 10, -5], r"bbox has zero or negative size \(width 10, height -5\)"),
    "right of the image": ([64, 10, 5, 5], r"bbox \[64, 10, 5, 5\] lies entirely outside image id 10 \(64x48\)"),
    "above the image": ([10, -9, 5, 5], r"bbox \[10, -9, 5, 5\] lies entirely outside image id 10"),
    "partly outside": ([50, 40, 30, 30], None),
}


@pytest.mark.parametrize("case", list(_BOXES))
def test_an_invalid_box_is_an_error_or_a_counted_skip(
    case: str, make_coco: Callable[..., Any], coco_document: Document, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bbox, problem = _BOXES[case]
    coco_document["annotations"][1]["bbox"] = bbox
    files = make_coco(**coco_document)
    if problem is None:  # clipped to the image: x 50..64, y 40..48
        _, target = CocoDetection(files.annotation_file, files.image_dir)[0]
        torch.testing.assert_close(target["boxes"][1], torch.tensor([57 / 64, 44 / 48, 14 / 64, 8 / 48]))
        return
    expected = f"{re.escape(str(files.annotation_file))}: annotation id 2: {problem}"
    with pytest.raises(DataError, match=expected + ".*on_invalid_box='drop'"):
        CocoDetection(files.annotation_file, files.image_dir)
    for main, args in ((validate_dataset.main, _validate_args(files)), (finetune.main, _finetune_args(files, tmp_path))):
        assert re.fullmatch(f"error: {expected}.*", _cli_error(main, args, capsys))

    # The documented skip: the box is left out, and one warning counts what was skipped.
    coco_document["annotations"][2]["bbox"] = [0, 0, 0, 0]  # a second invalid box, to be counted too
    files = make_coco(**coco_document)
    with pytest.warns(UserWarning, match=r"skipped 2 annotation\(s\) with invalid boxes, first: annotation id 2"):
        dataset = CocoDetection(files.annotation_file, files.image_dir, on_invalid_box="drop")
    _, target = dataset[0]
    assert [dataset.category_ids[label] for label in target["labels"].tolist()] == [5]
    assert {2, 3}.isdisjoint(dataset.coco.anns)


# -- 4. unknown category ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("category_id", [4, 0, -1])
def test_an_unknown_category_id_is_one_line_naming_the_annotation(
    category_id: int, make_coco: Callable[..., Any], coco_document: Document, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    coco_document["annotations"][3]["category_id"] = category_id
    files = make_coco(**coco_document)
    expected = f"{re.escape(str(files.annotation_file))}: annotation id 4: unknown category_id {category_id}"
    with pytest.raises(DataError, match=expected):
        CocoDetection(files.annotation_file, files.image_dir)
    for main, args in ((validate_dataset.main, _validate_args(files)), (finetune.main, _finetune_args(files, tmp_path))):
        assert re.fullmatch(f"error: {expected}", _cli_error(main, args, capsys))


# -- 5. images without annotations ---------------------------------------------------------------------------
def test_images_without_annotations_are_kept_counted_and_trained_on(
    make_coco: Callable[..., Any], coco_document: Document, capsys: pytest.CaptureFixture[str]
) -> None:
    coco_document["annotations"] = [a for a in coco_document["annotations"] if a["image_id"] != 11]
    files = make_coco(**coco_document)  # images 11 and 12 have no box
    dataset = CocoDetection(files.annotation_file, files.image_dir, _demo_transforms())
    assert dataset.image_ids == [10, 11, 12]
    for index in (1, 2):
        _, target = dataset[index]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert run_main(validate_dataset.main, _validate_args(files)) == 0
    assert "3 images (2 without boxes)" in capsys.readouterr().out

    model, task = build_supervised("deformable_detr", model_preset("tiny"), dataset.num_classes, LossConfig(),
                                   PairConfig())
    empty_batch = collate_detection([dataset[1], dataset[2]])  # not a single box in the batch
    loss = task.compute_loss(model, empty_batch)
    loss.total.backward()
    assert torch.isfinite(loss.total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- 6. more targets than queries ----------------------------------------------------------------------------
def _crowded_document(boxes: int) -> Document:
    """A 128x128 image with ``boxes`` small boxes in a grid, and a plain one."""
    columns = 20
    annotations = [{"id": i + 1, "image_id": 1, "category_id": 1 + i % 2,
                    "bbox": [(i % columns) * 6 + 1, (i // columns) * 12 + 1, 5, 10]} for i in range(boxes)]
    annotations.append({"id": boxes + 1, "image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 30]})
    return {"images": [{"id": 1, "file_name": "crowded.png", "width": 128, "height": 128},
                       {"id": 2, "file_name": "plain.png", "width": 128, "height": 128}],
            "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def test_more_targets_than_queries_matches_min_q_k_and_trains(make_coco: Callable[..., Any]) -> None:
    """200 boxes, 30 queries: the matcher pairs every query (min(Q, K)), and a training step goes through
    (the whole fine-tuning path with such an image: `test_unusual_but_valid_images_train_in_worker_processes`)."""
    files = make_coco(**_crowded_document(200))
    dataset = CocoDetection(files.annotation_file, files.image_dir, _demo_transforms())
    torch.manual_seed(0)
    samples = [dataset[0], dataset[1]]
    assert len(samples[0][1]["boxes"]) > 30
    config = model_preset("tiny")
    model, task = build_supervised("deformable_detr", config, dataset.num_classes, LossConfig(), PairConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = collate_detection(samples)
    loss = task.criterion(model(batch.images, batch.mask), batch.targets)
    assert [len(queries) for queries, _ in loss.indices] == [config.num_queries, 1]
    loss.total.backward()
    optimizer.step()
    assert torch.isfinite(loss.total)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- 7. grayscale, alpha, palette, 16-bit and other pixel formats --------------------------------------------
_W, _H = 64, 48


def _pil(mode: str, pixel: Any, fill: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = Image.new(mode, (_W, _H), fill)
        image.putpixel((0, 0), pixel)
        image.save(path)

    return write


def _palette(path: Path) -> None:
    image = Image.new("P", (_W, _H), 1)
    image.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.save(path, transparency=1)


def _cv2_16bit(channels: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:  # OpenCV writes B, G, R(, A)
        pixels = np.zeros((_H, _W, channels), dtype=np.uint16)
        pixels[0, 0, :3] = (128 * 257, 65535, 1000)  # -> R 3, G 255, B 128 at 8 bits
        if channels == 4:
            pixels[..., 3] = 65535
        assert cv2.imwrite(str(path), pixels)

    return write


def _cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (_W, _H), (0, 0, 0, 0)).save(path, format="JPEG", quality=95)


#: file name, how to write it, the RGB value its top-left pixel must read as, and the tolerance.
_FORMATS: dict[str, tuple[str, Callable[[Path], None], tuple[int, int, int], int]] = {
    "grayscale": ("grey.png", _pil("L", 77, 0), (77, 77, 77), 0),
    "grayscale + alpha": ("grey_alpha.png", _pil("LA", (77, 255), (0, 0)), (77, 77, 77), 0),
    "rgba": ("rgba.png", _pil("RGBA", (10, 20, 30, 255), (0, 0, 0, 0)), (10, 20, 30), 0),
    "transparent pixel": ("clear.png", _pil("RGBA", (10, 20, 30, 0), (0, 0, 0, 255)), (255, 255, 255), 0),
    "palette + transparency": ("palette.png", _palette, (200, 0, 0), 0),
    "1-bit": ("bits.png", _pil("1", 1, 0), (255, 255, 255), 0),
    "16-bit grayscale": ("deep_grey.png", _pil("I;16", 128 * 257, 0), (128, 128, 128), 0),
    "16-bit rgb": ("deep_rgb.png", _cv2_16bit(3), (3, 255, 128), 1),
    "16-bit rgba": ("deep_rgba.png", _cv2_16bit(4), (3, 255, 128), 1),
    "cmyk jpeg": ("cmyk.jpg", _cmyk_jpeg, (255, 255, 255), 3),
}


def _dataset_of(files: dict[str, Callable[[Path], None]], sizes: dict[str, tuple[int, int]], root: Path,
                boxes: bool = True) -> Path:
    """Writes the images and a COCO JSON declaring them (one box per image, its top-left quarter)."""
    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (name, write) in enumerate(files.items(), start=1):
        write(root / name)
        width, height = sizes.get(name, (_W, _H))
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        if boxes:
            annotations.append({"id": image_id, "image_id": image_id, "category_id": 1,
                                "bbox": [0, 0, max(width / 2, 1), max(height / 2, 1)]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


@pytest.mark.parametrize("case", list(_FORMATS))
def test_unusual_pixel_formats_read_as_8_bit_rgb(case: str, tmp_path: Path) -> None:
    name, write, rgb, tolerance = _FORMATS[case]
    annotations = _dataset_of({name: write}, {}, tmp_path)
    image, target = CocoDetection(annotations, tmp_path)[0]
    assert image.mode == "RGB" and image.size == (_W, _H)
    assert np.abs(np.asarray(image)[0, 0].astype(int) - rgb).max() <= tolerance, np.asarray(image)[0, 0]
    tensor, target = _demo_transforms()(image, target)
    assert tensor.shape[0] == 3 and torch.isfinite(tensor).all()


# -- 8. huge aspect ratios -----------------------------------------------------------------------------------
#: (width, height) of images far from square.
_ASPECTS: dict[str, tuple[int, int]] = {"4000x2 strip": (4000, 2), "3x3000 pole": (3, 3000), "1000x1 line": (1000, 1)}


@pytest.mark.parametrize("case", list(_ASPECTS))
def test_huge_aspect_ratios_survive_every_transform(case: str, tmp_path: Path) -> None:
    width, height = _ASPECTS[case]
    name = "odd.png"
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    annotations = _dataset_of({name: lambda p: Image.fromarray(noise).save(p)}, {name: (width, height)}, tmp_path)
    paper_pre_crop_limit = PRE_CROP_MAX_SIZE_FACTOR * PAPER_MAX_SIZE
    pipelines = {"demo": _demo_transforms(), "paper": make_train_transforms(),
                 "eval": make_eval_transforms(128, DEMO_MAX_SIZE)}
    for pipeline_name, transforms in pipelines.items():
        dataset = CocoDetection(annotations, tmp_path, transforms)
        for seed in range(6):  # both branches of the train augmentation (resize, resize-crop-resize)
            torch.manual_seed(seed)
            tensor, target = dataset[0]
            assert tensor.dim() == 3 and min(tensor.shape[1:]) >= 1 and torch.isfinite(tensor).all()
            assert target["size"].tolist() == list(tensor.shape[1:])
            assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
    # The resize before the crop is capped: uncapped, the 4000x2 strip became 600 x 1,200,000 pixels.
    pre_crop = pipelines["paper"].transforms[1].second.transforms[0]
    resized, _ = pre_crop(Image.fromarray(noise), {"size": torch.tensor([height, width])})
    assert max(resized.size) <= paper_pre_crop_limit


# -- all of the unusual but valid input at once, in DataLoader workers ---------------------------------------
def test_unusual_but_valid_images_train_in_worker_processes(tmp_path: Path) -> None:
    """Every pixel format and aspect ratio above, an image without boxes and one with 200, in one dataset:
    two training steps with 2 loader workers, then evaluation."""
    files = {name: write for name, write, _, _ in _FORMATS.values()}
    sizes = {}
    for case, (width, height) in _ASPECTS.items():
        name = case.split()[0] + ".png"
        noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        files[name] = lambda p, pixels=noise: Image.fromarray(pixels).save(p)
        sizes[name] = (width, height)
    annotations = _dataset_of(files, sizes, tmp_path / "data")
    document = json.loads(annotations.read_text())
    crowded = _crowded_document(200)
    next_id = len(document["images"]) + 1
    Image.new("RGB", (128, 128)).save(tmp_path / "data" / "crowded.png")
    Image.new("RGB", (128, 128)).save(tmp_path / "data" / "empty.png")
    document["images"] += [{**crowded["images"][0], "id": next_id},
                           {"id": next_id + 1, "file_name": "empty.png", "width": 128, "height": 128}]
    document["annotations"] += [{**a, "id": 1000 + i, "image_id": next_id, "category_id": 1}
                                for i, a in enumerate(crowded["annotations"][:200])]
    annotations.write_text(json.dumps(document))

    base = demo_finetune()
    cfg = replace(base, data=replace(base.data, train_json=annotations, val_json=annotations,
                                     images=tmp_path / "data", num_workers=2),
                  optim=replace(base.optim, epochs=1, batch_size=8),
                  run=replace(base.run, output_dir=tmp_path / "out", max_steps=2, log_every=1))
    metrics = finetune.finetune(cfg)
    assert set(metrics) >= {"AP", "AP50"}
    with (tmp_path / "out" / "scalars.csv").open() as handle:
        losses = [float(line.split(",")[2]) for line in handle if ",train/loss," in line]
    assert len(losses) == 2 and all(np.isfinite(losses))
