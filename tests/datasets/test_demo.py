import json
from pathlib import Path

import numpy as np
from PIL import Image

from detr_ssl.datasets.coco import CocoDetection
from detr_ssl.datasets.demo import DemoPaths, _build_once, demo_detection_dataset, demo_unlabeled_images


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = demo_detection_dataset(tmp_path / "a", num_train=6, num_val=2)
    second = demo_detection_dataset(tmp_path / "b", num_train=6, num_val=2)
    assert first.train_json.read_bytes() == second.train_json.read_bytes()
    assert first.val_json.read_bytes() == second.val_json.read_bytes()
    for image in sorted(first.image_dir.iterdir()):
        assert image.read_bytes() == (second.image_dir / image.name).read_bytes()
    other_seed = demo_detection_dataset(tmp_path / "c", num_train=6, num_val=2, seed=1)
    assert other_seed.train_json.read_bytes() != first.train_json.read_bytes()


def test_default_set_has_classes_objects_and_scales(demo_data: DemoPaths) -> None:
    train = json.loads(demo_data.train_json.read_text())
    assert len(train["images"]) == 64
    assert len(json.loads(demo_data.val_json.read_text())["images"]) == 16
    category_ids = sorted(c["id"] for c in train["categories"])
    assert len(category_ids) >= 4 and category_ids != list(range(1, len(category_ids) + 1))
    assert {a["category_id"] for a in train["annotations"]} == set(category_ids)

    per_image = np.bincount([a["image_id"] for a in train["annotations"]])[1:]
    assert per_image.min() >= 1 and per_image.max() <= 5 and (per_image >= 3).any()
    sides = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in train["annotations"]])
    assert (sides < 32).any() and ((sides >= 32) & (sides < 96)).any() and (sides >= 96).any()  # COCO s/m/l

    with Image.open(demo_data.image_dir / train["images"][0]["file_name"]) as image:
        assert image.size == (128, 128)
        assert np.asarray(image).std() > 10  # textured, not flat

    dataset = CocoDetection(demo_data.train_json, demo_data.image_dir)  # validates every annotation
    assert dataset.category_ids == category_ids


def test_colour_does_not_identify_the_class(demo_data: DemoPaths) -> None:
    train = json.loads(demo_data.train_json.read_text())
    names = {image["id"]: image["file_name"] for image in train["images"]}
    colours: dict[int, list[np.ndarray]] = {}
    for annotation in train["annotations"]:
        x, y, w, h = annotation["bbox"]
        with Image.open(demo_data.image_dir / names[annotation["image_id"]]) as image:
            centre = np.asarray(image)[y + h // 2 - 1 : y + h // 2 + 2, x + w // 2 - 1 : x + w // 2 + 2]
        if annotation["category_id"] != 12:  # every shape but the (hollow) ring is filled at its centre
            colours.setdefault(annotation["category_id"], []).append(centre.reshape(-1, 3).mean(0))
    for values in colours.values():
        assert np.std(np.stack(values), axis=0).mean() > 30


def test_second_call_reuses_the_cache(tmp_path: Path) -> None:
    first = demo_detection_dataset(tmp_path, num_train=2, num_val=1)
    stamp = first.train_json.stat().st_mtime_ns
    again = demo_detection_dataset(tmp_path, num_train=2, num_val=1)
    assert again == first
    assert again.train_json.stat().st_mtime_ns == stamp


def test_losing_a_creation_race_keeps_the_winners_copy(tmp_path: Path) -> None:
    final = tmp_path / "set"

    def build_while_another_process_finishes_first(tmp: Path) -> None:
        (tmp / "mine.txt").write_text("loser")
        final.mkdir()
        (final / "theirs.txt").write_text("winner")

    _build_once(final, build_while_another_process_finishes_first)
    assert [p.name for p in final.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary folder left behind


def test_environment_variable_chooses_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DETR_SSL_CACHE", str(tmp_path))
    paths = demo_detection_dataset(num_train=1, num_val=1)
    assert paths.train_json.is_relative_to(tmp_path / "demo-v1")


def test_demo_photos_are_rgb_images(demo_photos: Path) -> None:
    files = sorted(demo_photos.iterdir())
    assert 16 <= len(files) <= 40
    for path in files:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 32
    assert demo_unlabeled_images() == demo_photos
