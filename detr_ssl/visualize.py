"""Boxes drawn on images: outlined in a colour per class, each labelled on a filled tag, so they read on
any background (the tag's text is black or white, whichever contrasts with the tag)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "draw_boxes", "side_by_side", "stacked", "titled"]

#: Distinct, saturated colours; class ``i`` gets ``PALETTE[i % len(PALETTE)]``.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)


def draw_boxes(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str] = (),
               colour_ids: Sequence[int] = (), width: int | None = None, min_side: int = 384) -> Image.Image:
    """A copy of ``image`` with ``boxes`` (absolute x0, y0, x1, y1) outlined and tagged with ``labels``.

    ``colour_ids`` picks each box's palette colour (default: all the first colour); the line width defaults to
    about 1/150 of the image's longer side, at least 1 pixel. An image whose longer side is below
    ``min_side`` is enlarged to it first (boxes with it), so the tags stay legible on small images.
    """
    scale = max(1.0, min_side / max(image.size))
    canvas = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)))
    boxes = [[float(v) * scale for v in box] for box in boxes]
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = width or max(1, round(max(canvas.size) / 150))
    for index, box in enumerate(boxes):
        colour = PALETTE[(colour_ids[index] if index < len(colour_ids) else 0) % len(PALETTE)]
        x0, y0, x1, y1 = box
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=colour, width=line)
        if index < len(labels) and labels[index]:
            left, top, right, bottom = draw.textbbox((0, 0), labels[index], font=font)
            tag_w, tag_h = right - left + 4, bottom - top + 4
            tag_y = y0 - tag_h if y0 - tag_h >= 0 else y0  # above the box, or inside it at the top edge
            draw.rectangle((x0, tag_y, x0 + tag_w, tag_y + tag_h), fill=colour)
            draw.text((x0 + 2 - left, tag_y + 2 - top), labels[index], fill=_text_colour(colour), font=font)
    return canvas


def side_by_side(panels: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """The ``panels`` in one row on a white background, top-aligned."""
    width = sum(panel.width for panel in panels) + gap * (len(panels) - 1)
    row = Image.new("RGB", (width, max(panel.height for panel in panels)), (255, 255, 255))
    left = 0
    for panel in panels:
        row.paste(panel, (left, 0))
        left += panel.width + gap
    return row


def stacked(rows: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """The ``rows`` one above the other on a white background, left-aligned."""
    height = sum(row.height for row in rows) + gap * (len(rows) - 1)
    column = Image.new("RGB", (max(row.width for row in rows), height), (255, 255, 255))
    top = 0
    for row in rows:
        column.paste(row, (0, top))
        top += row.height + gap
    return column


def titled(panel: Image.Image, title: str) -> Image.Image:
    """``panel`` under a white strip holding ``title`` in black."""
    font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(panel).textbbox((0, 0), title, font=font)
    strip = bottom - top + 8
    framed = Image.new("RGB", (max(panel.width, right - left + 8), panel.height + strip), (255, 255, 255))
    ImageDraw.Draw(framed).text((4 - left, 4 - top), title, fill=(0, 0, 0), font=font)
    framed.paste(panel, (0, strip))
    return framed
