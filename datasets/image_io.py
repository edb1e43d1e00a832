"""Read any common image file as an upright 8-bit RGB PIL image, or fail with a `DataError` naming it.

Three things go wrong silently with a bare ``Image.open(path).convert("RGB")``, and are handled here:

- EXIF orientation (phone photos): the pixels on disk are rotated relative to what every viewer (and every
  annotation tool) shows. We apply the orientation, so boxes drawn on the displayed image line up.
- 16-bit images (``I;16`` / ``I`` modes): PIL's conversion to 8 bits *clips* at 255, which turns almost
  every pixel white. We rescale the full 0..65535 range to 0..255 instead.
- Transparency (RGBA, LA, palette with a transparent index): dropping alpha exposes whatever colour the
  encoder left under transparent pixels. We composite onto white, as viewers display them.

Truncated or corrupt files raise `DataError` at read time (the pixels are decoded here, not lazily).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detr_ssl.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageCheckReport",
    "check_image_size",
    "check_images",
    "read_image_size",
    "read_rgb_image",
]

#: File extensions (lower case) that image folders are scanned for.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

_DEEP_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
#: EXIF orientations 5-8 are rotations by +-90 degrees (with or without a mirror): width and height swap.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112


def read_rgb_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it upright, as an 8-bit ``RGB`` image.

    Raises:
        DataError: the file is missing, not an image, truncated or otherwise undecodable.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_rgb8(upright)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: corrupt or truncated image ({error})") from None


def read_image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` as displayed (EXIF orientation applied) without decoding the pixels.

    Raises:
        DataError: the file is missing or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: not a readable image file ({error})") from None
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def check_image_size(path: Path, actual: tuple[int, int], expected: tuple[int, int], source: Path) -> None:
    """Raise `DataError` when an image's displayed ``(width, height)`` differs from what ``source`` declares.

    Boxes are in the declared coordinate frame, so a mismatch would silently misplace every box.
    """
    if actual == expected:
        return
    hint = ""
    if actual == expected[::-1]:
        hint = " (width and height swapped: the file's EXIF orientation rotates it; annotate the upright image)"
    raise DataError(
        f"{path}: image is {actual[0]}x{actual[1]} pixels but {source} declares {expected[0]}x{expected[1]}{hint}"
    )


@dataclass
class ImageCheckReport:
    """Outcome of `check_images`: how many files were checked and one line per problem found."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_problems(self) -> None:
        """Raise one `DataError` naming the first problem and how many there are in all."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
            raise DataError(self.problems[0] + more)

    def __str__(self) -> str:
        lines = [f"checked {self.checked} image(s), {len(self.problems)} problem(s)", *self.problems]
        return "\n".join(lines)


def check_images(
    images: Iterable[tuple[Path, tuple[int, int] | None]], source: Path | None = None, decode: bool = True
) -> ImageCheckReport:
    """Check that every ``(path, expected (width, height) or None)`` is readable and of the declared size.

    Args:
        images: files to check, each with the size ``source`` declares for it (None: any size).
        source: the annotation file that declared the sizes, named in mismatch messages.
        decode: decode every pixel (finds truncated files); False only reads headers, which is much faster.
    """
    report = ImageCheckReport()
    for path, expected in images:
        report.checked += 1
        try:
            size = read_rgb_image(path).size if decode else read_image_size(path)
            if expected is not None:
                check_image_size(path, size, expected, source if source is not None else path)
        except DataError as error:
            report.problems.append(str(error))
    return report


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode in _DEEP_INTEGER_MODES:
        return _deep_to_rgb8(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image  # exif_transpose already handed us a copy detached from the file


def _deep_to_rgb8(image: Image.Image) -> Image.Image:
    """Map a 16-bit (or 32-bit integer holding 16-bit data) grey image to 8 bits by scaling, not clipping."""
    values = np.asarray(image, dtype=np.float64)
    scaled = np.clip(values, 0, 65535) * (255.0 / 65535.0)
    grey = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
