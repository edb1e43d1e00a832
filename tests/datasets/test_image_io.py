from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr_ssl.datasets.image_io import check_images, read_image_size, read_rgb_image
from detr_ssl.errors import DataError

_EXIF_ORIENTATION = 0x0112


def _pixels(path: Path) -> np.ndarray:
    image = read_rgb_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((5, 7), 77, dtype=np.uint8)).save(path)
    pixels = _pixels(path)
    assert pixels.shape == (5, 7, 3)
    assert (pixels == 77).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: colour kept
    rgba[1, 1] = (10, 20, 30, 0)  # transparent: white, whatever colour is stored under it
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    pixels = _pixels(path)
    assert tuple(pixels[0, 0]) == (10, 20, 30)
    assert tuple(pixels[1, 1]) == (255, 255, 255)


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    image.putdata([0, 1, 1])
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)
    pixels = _pixels(path)
    assert tuple(pixels[0, 0]) == (200, 0, 0)
    assert tuple(pixels[0, 1]) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 128 * 257, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")  # really stored as 16 bits
    grey = _pixels(path)[0, :, 0]
    assert grey.tolist() == [0, 4, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high with a red block top-left; orientation 6 = display rotated 90 degrees clockwise.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    pixels = _pixels(path)
    assert pixels.shape == (40, 20, 3)  # height and width swapped
    assert read_image_size(path) == (20, 40)
    assert pixels[2, -3, 0] > 200 and pixels[2, 2, 0] < 50  # the block is now top-right


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpeg", "not_an_image", "missing"])
def test_unreadable_file_names_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.img"
    if kind.startswith("truncated"):
        fmt = "PNG" if kind.endswith("png") else "JPEG"
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_an_image":
        path.write_text("hello")
    with pytest.raises(DataError, match=path.name):
        read_rgb_image(path)


def test_check_images_reports_every_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 3)).save(good)
    report = check_images([(good, (4, 3)), (good, (5, 3)), (tmp_path / "gone.png", None)], source=tmp_path / "a.json")
    assert report.checked == 3
    assert not report.ok
    assert len(report.problems) == 2
    assert "a.json declares 5x3" in report.problems[0]
    assert "gone.png" in report.problems[1]
    with pytest.raises(DataError, match="1 more"):
        report.raise_if_problems()
