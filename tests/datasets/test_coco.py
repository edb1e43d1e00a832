import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ssl.datasets.coco import CocoDetection
from detr_ssl.errors import DataError


def _dataset(files: Any, **kwargs: Any) -> CocoDetection:
    return CocoDetection(files.annotation_file, files.image_dir, **kwargs)


def test_non_contiguous_category_ids_map_to_labels_and_back(tiny_coco: Any) -> None:
    dataset = _dataset(tiny_coco)
    assert dataset.category_ids == [2, 5, 9]
    assert dataset.category_names == ["two", "five", "nine"]
    assert dataset.num_classes == 3

    _, target = dataset[0]  # image id 10: category 5 then category 9 (the crowd box is dropped)
    assert target["labels"].dtype == torch.int64
    assert [dataset.category_ids[label] for label in target["labels"].tolist()] == [5, 9]


def test_target_follows_the_contract(tiny_coco: Any) -> None:
    dataset = _dataset(tiny_coco)
    image, target = dataset[0]
    assert image.size == (64, 48)
    assert target["image_id"].item() == 10
    assert target["orig_size"].tolist() == [48, 64]
    assert target["size"].tolist() == [48, 64]
    # bbox [4, 6, 20, 10] in a 64x48 image -> centre (14, 11), size (20, 10), normalised.
    expected = torch.tensor([14 / 64, 11 / 48, 20 / 64, 10 / 48])
    torch.testing.assert_close(target["boxes"][0], expected)


def test_crowd_annotations_are_dropped_from_targets_but_kept_for_evaluation(tiny_coco: Any) -> None:
    dataset = _dataset(tiny_coco)
    _, target = dataset[0]
    assert len(target["boxes"]) == 2
    assert [a["id"] for a in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[10]))] == [1, 2, 3]


def test_images_without_boxes_are_kept(tiny_coco: Any) -> None:
    dataset = _dataset(tiny_coco)
    assert dataset.image_ids == [10, 11, 12]
    _, target = dataset[2]
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].shape == (0,)


def test_box_partly_outside_is_clipped(tiny_coco: Any) -> None:
    _, target = _dataset(tiny_coco)[1]  # bbox [30, 25, 20, 10] in a 40x40 image -> x from 30 to 40
    torch.testing.assert_close(target["boxes"][0], torch.tensor([35 / 40, 30 / 40, 10 / 40, 10 / 40]))


def test_box_covers_its_pixels(tiny_coco: Any) -> None:
    image, target = _dataset(tiny_coco)[1]
    white = np.argwhere(np.asarray(image)[..., 0] > 127)
    cx, cy, w, h = (target["boxes"][0] * torch.tensor([40, 40, 40, 40])).tolist()
    assert white[:, 1].min() == cx - w / 2 and white[:, 1].max() + 1 == cx + w / 2
    assert white[:, 0].min() == cy - h / 2 and white[:, 0].max() + 1 == cy + h / 2


def test_coco_object_is_quiet_and_needs_no_second_read(tiny_coco: Any, capsys: pytest.CaptureFixture) -> None:
    dataset = _dataset(tiny_coco)
    tiny_coco.annotation_file.unlink()
    coco = dataset.coco
    assert sorted(coco.getCatIds()) == [2, 5, 9]
    assert coco.anns[4]["area"] == 200 and coco.anns[4]["iscrowd"] == 0  # filled in for COCOeval
    assert capsys.readouterr().out == ""


def _set_bbox(annotation_id: int, bbox: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        next(a for a in document["annotations"] if a["id"] == annotation_id)["bbox"] = bbox

    return change


_BAD_DOCUMENTS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "missing key": (lambda d: d.pop("annotations"), "'annotations'"),
    "images not a list": (lambda d: d.update(images={}), "'images' must be a list"),
    "image id not an integer": (lambda d: d["images"][0].update(id="10"), "images\\[0\\]"),
    "unknown image": (lambda d: d["annotations"][0].update(image_id=99), "annotation id 1: unknown image_id 99"),
    "unknown category": (lambda d: d["annotations"][1].update(category_id=4), "annotation id 2: unknown category_id 4"),
    "zero width": (_set_bbox(2, [30, 20, 0, 20]), "annotation id 2: bbox has zero or negative size"),
    "negative height": (_set_bbox(1, [4, 6, 20, -3]), "annotation id 1: bbox has zero or negative size"),
    "three numbers": (_set_bbox(1, [4, 6, 20]), "annotation id 1: 'bbox' must be 4 finite numbers"),
    "not numbers": (_set_bbox(1, [4, 6, "20", 10]), "annotation id 1: 'bbox' must be 4 finite numbers"),
    "entirely outside": (_set_bbox(4, [45, 0, 5, 5]), "annotation id 4: bbox .* lies entirely outside"),
    "duplicate annotation id": (lambda d: d["annotations"][1].update(id=1), "duplicate annotation id 1"),
}


@pytest.mark.parametrize("case", list(_BAD_DOCUMENTS))
def test_malformed_annotations_raise_a_data_error_naming_file_and_entry(
    tmp_path: Path, coco_document: dict[str, Any], case: str
) -> None:
    change, message = _BAD_DOCUMENTS[case]
    change(coco_document)
    path = tmp_path / "broken_instances.json"
    path.write_text(json.dumps(coco_document))
    with pytest.raises(DataError, match=f"broken_instances.json: .*{message}"):
        CocoDetection(path, tmp_path)


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="list.json: expected a JSON object at the top level, found a list"):
        CocoDetection(path, tmp_path)


def test_json_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "syntax.json"
    path.write_text('{"images": [],\n  "annotations": [,]}')
    with pytest.raises(DataError, match=r"syntax.json: invalid JSON at line 2, column 19"):
        CocoDetection(path, tmp_path)


def test_missing_annotation_file_and_image_folder(tmp_path: Path, tiny_coco: Any) -> None:
    with pytest.raises(DataError, match="nothing.json: annotation file not found"):
        CocoDetection(tmp_path / "nothing.json", tmp_path)
    with pytest.raises(DataError, match="no_such_folder: image folder not found"):
        CocoDetection(tiny_coco.annotation_file, tmp_path / "no_such_folder")


def test_invalid_boxes_can_be_dropped_instead(make_coco: Callable[..., Any], coco_document: dict[str, Any]) -> None:
    annotations = coco_document["annotations"]
    annotations[0]["bbox"] = [4, 6, 0, 10]
    files = make_coco(annotations=annotations)
    with pytest.raises(DataError, match="on_invalid_box='drop'"):
        _dataset(files)
    with pytest.warns(UserWarning, match="1 annotation"):
        dataset = _dataset(files, on_invalid_box="drop")
    _, target = dataset[0]
    assert [dataset.category_ids[label] for label in target["labels"].tolist()] == [9]
    dropped_annotation_id = annotations[0]["id"]
    assert dropped_annotation_id not in dataset.coco.anns


def test_missing_and_truncated_images_raise_at_access_and_are_reported(tiny_coco: Any) -> None:
    (tiny_coco.image_dir / "a.png").unlink()
    b_png = tiny_coco.image_dir / "b.png"
    b_png.write_bytes(b_png.read_bytes()[:40])
    dataset = _dataset(tiny_coco)
    with pytest.raises(DataError, match="a.png: image file not found"):
        dataset[0]
    with pytest.raises(DataError, match="b.png"):
        dataset[1]
    report = dataset.validate_images()
    assert report.checked == 3
    assert len(report.problems) == 2


def test_image_size_disagreeing_with_json_is_an_error(tiny_coco: Any) -> None:
    Image.new("RGB", (48, 64)).save(tiny_coco.image_dir / "a.png")  # declared 64x48
    with pytest.raises(DataError, match="a.png: image is 48x64 pixels but .*instances.json declares 64x48"):
        _dataset(tiny_coco)[0]
