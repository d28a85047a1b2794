"""Save each image with its caption written in a white band beneath it (Pillow only)."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw, ImageFont

from capgen.runtime.preprocess import to_rgb

MAX_WIDTH = 1024
MIN_WIDTH = 320
MARGIN = 12


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font when FreeType is present
    except (TypeError, OSError):
        return ImageFont.load_default()


def _wrap(text: str, font: Any, draw: ImageDraw.ImageDraw, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current else lines or [""]


def for_annotation(image: Image.Image) -> Image.Image:
    """The RGB picture an annotated copy shows: a decoded upright image, at most MAX_WIDTH wide.

    The CLI makes it from the image it decodes for captioning, so each image
    is decoded once; this smaller copy is what it keeps until the caption is known.
    """
    picture = to_rgb(image)
    if picture.width > MAX_WIDTH:
        picture = picture.resize(
            (MAX_WIDTH, max(1, round(picture.height * MAX_WIDTH / picture.width)))
        )
    return picture


def annotate(picture: Image.Image, caption: str) -> Image.Image:
    """`picture` (from for_annotation) with the caption written in a white band beneath it."""
    width = max(picture.width, MIN_WIDTH)
    font = _font(max(14, width // 36))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(caption, font, measure, width - 2 * MARGIN)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 3)
    line_height = ascent + descent + 4
    band = 2 * MARGIN + line_height * len(lines)
    canvas = Image.new("RGB", (width, picture.height + band), "white")
    canvas.paste(picture, ((width - picture.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text(
            (MARGIN, picture.height + MARGIN + number * line_height), line, fill="black", font=font
        )
    return canvas
