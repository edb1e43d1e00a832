import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from detr_ssl.datasets.collate import collate_detection
from detr_ssl.datasets.transforms import make_train_transforms
from detr_ssl.datasets.unlabeled import ImageFolderDataset
from detr_ssl.errors import DataError


def test_loads_demo_photos_into_a_batch(demo_photos: Path) -> None:
    dataset = ImageFolderDataset(demo_photos, make_train_transforms([64, 80], max_size=100, crop=(40, 60)))
    assert len(dataset) >= 16
    torch.manual_seed(0)
    batch = collate_detection([dataset[i] for i in range(4)])
    assert batch.images.shape[:2] == (4, 3)
    for target in batch.targets:
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert [t["image_id"].item() for t in batch.targets] == [0, 1, 2, 3]


def test_folder_is_searched_recursively_for_images_only(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    Image.new("L", (8, 6)).save(tmp_path / "a.png")
    Image.new("RGB", (5, 5)).save(tmp_path / "sub" / "deeper" / "b.JPG", format="JPEG")
    Image.new("RGB", (5, 5)).save(tmp_path / ".hidden" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path)
    assert [p.name for p in dataset.image_paths] == ["a.png", "b.JPG"]
    image, target = dataset[0]
    assert image.mode == "RGB" and target["orig_size"].tolist() == [6, 8]
    assert dataset.validate_images().ok


def test_empty_or_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images found"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="missing: no such image folder"):
        ImageFolderDataset(tmp_path / "missing")


def test_coco_json_source_ignores_labels(tiny_coco) -> None:
    dataset = ImageFolderDataset(tiny_coco.annotation_file, image_dir=tiny_coco.image_dir)
    assert dataset.image_ids == [10, 11, 12]
    _, target = dataset[0]
    assert target["image_id"].item() == 10 and target["boxes"].shape == (0, 4)


def test_coco_json_source_without_its_image_folder(tmp_path: Path) -> None:
    path = tmp_path / "unlabeled.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}]}))
    with pytest.raises(DataError, match="unlabeled.json: image .*x.png not found; pass the folder"):
        ImageFolderDataset(path)
