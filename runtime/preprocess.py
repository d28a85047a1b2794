"""Any image a user has -> the uint8 RGB pixels the encoder graph expects.

For an ordinary RGB photo this is exactly the tutorial's
`Image.open(p).resize((299, 299))` (BICUBIC, Pillow's default since 7.0, named
explicitly) as Pillow <= 11 computes it, on every Pillow (see `resize`), so
converted models see the pixels they were trained on. Beyond
the tutorial, which crashes on them, every other kind of image is turned into
RGB first (see `to_rgb`) and EXIF orientation is applied.

Accepted sources:
- a path (`str` or `os.PathLike`): a file in one of `ALLOWED_FORMATS`
  (first frame of animated GIF / multi-page TIFF);
- `bytes` / `bytearray` / `memoryview`: the encoded file's content (not a path);
- a binary file object (anything with `.read()`);
- a `PIL.Image.Image` (its current frame, EXIF orientation applied);
- a numpy array `HxW`, `HxWx1`, `HxWx3` or `HxWx4` (RGB(A)): `uint8` as is,
  `uint16` as 16-bit (divided by 257), `bool` as black/white, floats must lie
  in [0, 1] (the matplotlib/skimage convention) and are scaled by 255.

Every source, arrays and PIL images included, gets the same `max_pixels`
limit, checked before any pixel is decoded or copied.
"""

from __future__ import annotations

import importlib
import io
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from capgen.runtime import limits
from capgen.runtime.errors import (
    CapgenError,
    ImageError,
    ImageTooLargeError,
    InputError,
    ModelError,
)
from capgen.runtime.git_lfs import is_pointer as is_lfs_pointer

# Formats a photo plausibly comes in. Only their plugins are imported (Pillow's
# `Image.init()` would import ~40, costing 60 ms of every cold start), and the
# list keeps Pillow away from formats that shell out (EPS -> Ghostscript).
# Plugins register themselves on import.
for _plugin in ("Bmp", "Gif", "Ico", "Jpeg", "Mpo", "Png", "Ppm", "Tga", "Tiff", "WebP"):
    importlib.import_module(f"PIL.{_plugin}ImagePlugin")
ALLOWED_FORMATS = tuple(
    name
    # camera MPO files open through the JPEG plugin
    for name in ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "ICO")
    if name in Image.OPEN
)
IMAGE_SUFFIXES = frozenset(
    suffix for suffix, name in Image.EXTENSION.items() if name in ALLOWED_FORMATS
)
# Pillow's own bomb threshold (~89 Mpx, a 9500x9500 photo); above it decoding
# would take gigabytes, so such images are refused before any pixel is decoded.
DEFAULT_MAX_PIXELS = 89_478_485

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HTML_PREFIXES = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")


def _describe_non_image(head: bytes) -> str:
    stripped = head.lstrip().lower()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in stripped):
        return "SVG drawings are not supported; export a PNG or JPEG"
    if stripped.startswith(_HTML_PREFIXES):
        return "not an image: the file is an HTML/XML page (a failed download?)"
    if is_lfs_pointer(stripped):
        return "not an image: the file is a Git LFS pointer; run `git lfs pull`"
    if head[4:8] == b"ftyp" and head[8:12] in (
        b"heic",
        b"heix",
        b"mif1",
        b"msf1",
        b"avif",
        b"hevc",
    ):
        return "HEIC/AVIF images are not supported; convert to JPEG or PNG"
    if head.startswith(b"%PDF"):
        return "not an image: the file is a PDF"
    return "not an image in a supported format (" + ", ".join(ALLOWED_FORMATS) + ")"


def _decode(stream: BinaryIO, max_pixels: int) -> Image.Image:
    """Open and fully decode the first frame, mapping every Pillow failure to an ImageError.

    Pillow raises a zoo of exception types on hostile input (OSError,
    SyntaxError, ValueError, struct.error, EOFError, ...), so anything
    escaping the decoder is by definition a bad image, not a capgen bug.
    """
    head = stream.read(64)
    if not head:
        raise ImageError("empty file")
    stream.seek(0)
    try:
        image = Image.open(stream, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large to decode safely ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(_describe_non_image(head)) from None
    except Exception as exc:
        raise ImageError(f"cannot read image header ({type(exc).__name__}: {exc})") from None
    _check_pixel_count(*image.size, max_pixels)
    try:
        image.load()
    except Exception as exc:
        # Truncated files land here too: LOAD_TRUNCATED_IMAGES stays off, a
        # half-grey photo would caption confidently and wrongly.
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return _upright(image)


def _upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a photo whose EXIF block is damaged is used as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _special_file_kind(path: str | bytes | os.PathLike[str]) -> str | None:
    """'a FIFO', 'a device', 'a socket' for what is not a regular file or folder, else None.

    Opening a named pipe blocks until something writes to it, so `capgen caption
    pipe.jpg` would hang forever; such paths are refused before they are opened.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # open() below reports missing, unreadable or impossible paths in its own words
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _os_path(path: str | os.PathLike[str]) -> str | bytes:
    """The path as the OS takes it, or an InputError for what no file can be named."""
    try:
        name = os.fspath(path)
    except Exception as exc:  # a user's PathLike whose __fspath__ fails or returns a non-path
        raise InputError(f"cannot use this path object ({_reason(exc)})") from exc
    if ("\0" if isinstance(name, str) else b"\0") in name:
        raise InputError("the path contains a NUL character, which no file name can hold")
    return name


def _open_path(source: str | os.PathLike[str], max_pixels: int) -> Image.Image:
    path = _os_path(source)
    special = _special_file_kind(path)
    if special is not None:
        raise InputError(f"is {special}, not an image file")
    try:
        with open(path, "rb") as handle:
            _check_byte_count(os.fstat(handle.fileno()).st_size)
            return _decode(handle, max_pixels)
    except FileNotFoundError:
        raise InputError("no such file") from None
    except IsADirectoryError:
        raise InputError("is a directory, not an image") from None
    except PermissionError:
        raise InputError("permission denied") from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})") from None


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    """The decompression-bomb guard, for every source: files, PIL images and arrays alike.

    The side is bounded too, not only the area: resizing memory grows with the
    longest side, so a 1 x 30,000,000 strip under the pixel limit still cost a gigabyte.
    """
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, more than the "
            f"{max_pixels} capgen decodes (decompression bomb guard)"
        )
    if max(width, height) > limits.MAX_IMAGE_SIDE:
        raise ImageTooLargeError(
            f"image is {width}x{height} pixels; capgen decodes no side longer than "
            f"{limits.MAX_IMAGE_SIDE} pixels (a strip that thin would take gigabytes to resize)"
        )


def _check_byte_count(size: int) -> None:
    """Refuse an encoded image larger than limits.MAX_IMAGE_BYTES, before it is read."""
    if size > limits.MAX_IMAGE_BYTES:
        raise ImageTooLargeError(
            f"image file is more than {limits.MAX_IMAGE_BYTES:,} bytes, the most capgen reads "
            "for one image"
        )


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputError(f"array of shape {array.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"array of shape {array.shape} has no pixels")
    # Checked before any conversion copies it: a broadcast view costs no memory
    # until np.ascontiguousarray below materialises every pixel.
    _check_pixel_count(array.shape[1], array.shape[0], max_pixels)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = np.round(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InputError("float arrays must hold values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InputError(
            f"array dtype {array.dtype} is not supported (use uint8, uint16 or float in [0, 1])"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def _reason(exc: BaseException) -> str:
    """'Type: first line of the message', safe for any exception a user's object may raise."""
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # an exception whose __str__ itself fails
        lines = []
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


_READ_CHUNK = 1 << 20


def _read_file_object(source: Any) -> bytes:
    """All bytes of a user's file object, read in chunks up to limits.MAX_IMAGE_BYTES.

    Reading in chunks means an endless stream (`capgen caption - < /dev/zero`)
    is refused once it passes the limit, not after gigabytes are buffered.
    Whatever the object's read() raises is this image's error.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = source.read(_READ_CHUNK)
        except PermissionError:
            raise InputError("permission denied") from None
        except OSError as exc:
            raise InputError(f"cannot read ({exc.strerror or exc})") from None
        except Exception as exc:  # a closed file (ValueError), a failing wrapper (anything)
            raise ImageError(f"cannot read from the file object ({_reason(exc)})") from exc
        if chunk is None:  # a non-blocking stream with nothing ready: what came so far is all
            break
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InputError("file object must be opened in binary mode")
        if not chunk:
            break
        total += len(chunk)
        _check_byte_count(total)
        chunks.append(bytes(chunk))
    return b"".join(chunks)


def _load_image(source: Any, max_pixels: int) -> Image.Image:
    if isinstance(source, Image.Image):
        # Before load(): an Image.open()ed bomb would otherwise decode first.
        _check_pixel_count(source.width, source.height, max_pixels)
        try:
            source.load()
        except Exception as exc:
            raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from None
        # Same pixels as captioning the file itself; a no-op for images already made upright.
        return _upright(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_byte_count(memoryview(source).nbytes)
        return _decode(io.BytesIO(bytes(source)), max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(source, max_pixels)
    if hasattr(source, "read"):
        return _decode(io.BytesIO(_read_file_object(source)), max_pixels)
    raise InputError(f"cannot make an image from a {type(source).__name__}")


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A decoded, upright PIL image from any supported source (see module docstring).

    Every failure is a CapgenError (InputError or ImageError) about this one
    image, so a batch reports it and goes on: the sources are the user's
    objects, whose methods may raise anything.
    """
    try:
        return _load_image(source, max_pixels)
    except CapgenError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot use this image ({_reason(exc)})") from exc


def _alpha_on_white(image: Image.Image) -> Image.Image:
    """Composite onto white: a transparent logo or icon is drawn on a white page
    almost everywhere it is shown, while the tutorial's dropping of alpha
    reveals whatever colour the invisible pixels happen to store (often black)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels for any Pillow mode; RGB images are returned untouched (tutorial parity)."""
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        if mode in _ALPHA_MODES or (mode in ("P", "L") and "transparency" in image.info):
            return _alpha_on_white(image)
        if mode in _SIXTEEN_BIT_MODES:
            # 16-bit (and 32-bit integer) grey: full range 0..65535 maps onto 0..255.
            values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
            return Image.fromarray(np.round(values / 257.0).astype(np.uint8)).convert("RGB")
        if mode == "F":
            # Float grey: [0, 1] data is scaled, anything else is taken as 0..255.
            values = np.nan_to_num(
                np.asarray(image, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0
            )
            if values.size and values.max() <= 1.0:
                values = values * 255.0
            return Image.fromarray(np.round(np.clip(values, 0, 255)).astype(np.uint8)).convert(
                "RGB"
            )
        return image.convert("RGB")
    except Exception as exc:
        raise ImageError(
            f"cannot convert {mode} image to RGB ({type(exc).__name__}: {exc})"
        ) from None


def resample_filter(name: str) -> Image.Resampling:
    """The Pillow filter a manifest's `encoder.input.resize_filter` names; a bad name is the model's fault."""
    try:
        return Image.Resampling[name.upper()]
    except KeyError:
        raise ModelError(f"unknown resize filter {name!r} in the model's manifest") from None


def prepare(
    source: Any,
    width: int,
    height: int,
    resize_filter: Image.Resampling = Image.Resampling.BICUBIC,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """uint8 [height, width, 3] RGB pixels for the encoder."""
    rgb = to_rgb(load_image(source, max_pixels))
    try:
        return np.asarray(resize(rgb, width, height, resize_filter), dtype=np.uint8)
    except Exception as exc:
        raise ImageError(f"cannot resize image ({_reason(exc)})") from None


def resize(
    image: Image.Image, width: int, height: int, resize_filter: Image.Resampling
) -> Image.Image:
    """`image` resized to width x height: the horizontal pass first, then the vertical one.

    Why two one-axis calls instead of one `image.resize((width, height))`:
    Pillow's separable resampler rounds to uint8 between its two passes, so
    the pass order changes pixels. Pillow 10 and 11 always ran the horizontal
    pass first; 12.3 runs the vertical one first for some very narrow images;
    13 whenever the height shrinks enough more than the width (a 333x500
    portrait to 299x299 is one: about one photo in six, and some greedy
    captions). Fixing the order here makes it capgen's, not Pillow's: every
    supported Pillow (>= 10) gives Pillow 10/11's own bytes, and the browser
    runtime (web/resample.mjs) follows the same order, so "the same tokens"
    means the same on every install. A pass whose size does not change is
    skipped, as Pillow itself does; the two passes are the work one call does
    (tests/runtime/test_resize_order.py holds Pillow 11's bytes for every filter).
    """
    if image.width != width:
        image = image.resize((width, image.height), resize_filter)
    if image.height != height:
        image = image.resize((width, height), resize_filter)
    return image


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
