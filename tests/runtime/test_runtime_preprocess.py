"""Preprocessing: tutorial pixels for RGB photos, sane RGB for everything else, clean errors."""

from __future__ import annotations

import io
import os
import pwd
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capgen.runtime import preprocess
from capgen.runtime.errors import CapgenError, ImageError, ImageTooLargeError, InputError
from capgen.runtime.preprocess import load_image, prepare, to_rgb

SIZE = 29  # odd, so resizing really resamples


def _tutorial_pixels(source: Path | io.BytesIO) -> np.ndarray:
    """The tutorial's extract_features preprocessing, minus the model call."""
    image = np.array(Image.open(source).resize((SIZE, SIZE)))
    if image.shape[2] == 4:
        image = image[..., :3]
    return image


def _photo(seed: int = 0, size: tuple[int, int] = (97, 61)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.random((size[1], size[0], 3)) * 255
    return Image.fromarray(base.astype(np.uint8))


def _save(image: Image.Image, path: Path, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    image.save(path, **kwargs)
    return path


def test_rgb_jpeg_gets_exactly_the_tutorial_pixels(tmp_path: Path) -> None:
    path = _save(_photo(), tmp_path / "photo.jpg", quality=90)
    assert np.array_equal(prepare(path, SIZE, SIZE), _tutorial_pixels(path))
    assert np.array_equal(prepare(str(path), SIZE, SIZE), _tutorial_pixels(path))


def test_real_flickr_photos_get_exactly_the_tutorial_pixels(flickr_photos: list[Path]) -> None:
    """The tutorial's `resize((299, 299))` as Pillow 10 and 11 compute it: width pass, then height.

    Pillow 12.3 and 13 run the height pass first for some portraits (1131932671 here), so the
    tutorial's own pixels depend on the Pillow installed; capgen fixes the order on every
    Pillow (runtime/preprocess.py `resize`, tests/runtime/test_resize_order.py, docs/web.md).
    """
    for path in flickr_photos[:4]:
        image = Image.open(path)
        expected = np.array(image.resize((299, image.height)).resize((299, 299)))
        assert np.array_equal(prepare(path, 299, 299), expected), path.name


def test_opaque_rgba_matches_the_tutorial_which_drops_alpha(tmp_path: Path) -> None:
    rgba = _photo(1).convert("RGBA")
    path = _save(rgba, tmp_path / "opaque.png")
    assert np.array_equal(prepare(path, SIZE, SIZE), _tutorial_pixels(path))


def test_transparent_pixels_are_composited_onto_white() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    rgba[:5, :, :] = (255, 0, 0, 255)  # opaque red top half
    pixels = prepare(Image.fromarray(rgba), 10, 10, Image.Resampling.NEAREST)
    assert (pixels[:5] == (255, 0, 0)).all()
    assert (pixels[5:] == 255).all()


@pytest.mark.parametrize(
    "mode", ["1", "L", "P", "CMYK", "LA", "PA", "I", "I;16", "F", "RGBA", "YCbCr"]
)
def test_every_pillow_mode_becomes_rgb_uint8(mode: str) -> None:
    source = _photo(2)
    if mode == "PA":
        image = source.convert("P").convert("PA")
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257)
    else:
        image = source.convert(mode)
    assert image.mode == mode
    pixels = prepare(image, SIZE, SIZE)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    if mode in ("1", "L", "I", "I;16", "F", "LA"):
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_sixteen_bit_grey_uses_the_full_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = _save(Image.fromarray(ramp), tmp_path / "deep.png")
    rgb = to_rgb(load_image(path))
    values = np.asarray(rgb)[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_float_grey_in_unit_range_is_scaled() -> None:
    image = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    assert image.mode == "F"
    assert (np.asarray(to_rgb(image)) == 128).all()


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    path = _save(image, tmp_path / "transparent.png", transparency=0)
    pixels = prepare(path, 8, 8, Image.Resampling.NEAREST)
    assert (pixels[:, :4] == (255, 0, 0)).all()
    assert (pixels[:, 4:] == 255).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = _save(_photo(3).convert("CMYK"), tmp_path / "cmyk.jpg")
    assert Image.open(path).mode == "CMYK"
    assert prepare(path, SIZE, SIZE).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize(
    "fmt,suffix", [("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp"), ("GIF", "gif")]
)
def test_other_formats(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = _save(_photo(4), tmp_path / f"photo.{suffix}", format=fmt)
    assert prepare(path, SIZE, SIZE).shape == (SIZE, SIZE, 3)


def test_animated_gif_and_multipage_tiff_use_the_first_frame(tmp_path: Path) -> None:
    frames = [
        Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))
    ]
    for suffix in ("gif", "tif"):
        path = tmp_path / f"frames.{suffix}"
        frames[0].save(path, save_all=True, append_images=frames[1:])
        assert getattr(Image.open(path), "n_frames", 1) == 3
        pixels = prepare(path, 8, 8)
        assert (np.abs(pixels.astype(int) - (255, 0, 0)) <= 2).all(), suffix


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_image(path)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright)
    assert pixels[:15].mean() > 200 and pixels[25:].mean() < 50  # white is now on top


def test_an_opened_pil_image_is_made_upright_like_its_file(tmp_path: Path) -> None:
    image = _photo(9, (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(image, tmp_path / "rotated.png", exif=exif)
    with Image.open(path) as opened:
        assert np.array_equal(prepare(opened, SIZE, SIZE), prepare(path, SIZE, SIZE))
        assert load_image(opened).size == (20, 40)


def test_a_damaged_exif_block_does_not_lose_the_photo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(_photo(10), tmp_path / "photo.jpg")
    expected = prepare(path, SIZE, SIZE)

    def broken_exif(image: Image.Image) -> Image.Image:
        raise SyntaxError("not a TIFF file (header b'' not valid)")

    monkeypatch.setattr(preprocess.ImageOps, "exif_transpose", broken_exif)
    assert np.array_equal(prepare(path, SIZE, SIZE), expected)


def test_one_pixel_image(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (1, 1), (10, 200, 30)), tmp_path / "dot.png")
    pixels = prepare(path, SIZE, SIZE)
    assert (pixels == (10, 200, 30)).all()


def test_all_source_kinds_give_the_same_pixels(tmp_path: Path) -> None:
    image = _photo(5)
    path = _save(image, tmp_path / "photo.png")
    data = path.read_bytes()
    expected = prepare(path, SIZE, SIZE)
    with path.open("rb") as handle:
        from_handle = prepare(handle, SIZE, SIZE)
    for pixels in (
        prepare(str(path), SIZE, SIZE),
        prepare(data, SIZE, SIZE),
        prepare(bytearray(data), SIZE, SIZE),
        prepare(io.BytesIO(data), SIZE, SIZE),
        from_handle,
        prepare(Image.open(path), SIZE, SIZE),
        prepare(np.asarray(image), SIZE, SIZE),
        prepare(np.asarray(image).astype(np.float32) / 255.0, SIZE, SIZE),
        prepare(
            np.dstack([np.asarray(image), np.full(image.size[::-1], 255, np.uint8)]), SIZE, SIZE
        ),
    ):
        assert np.array_equal(pixels, expected)


def test_grey_arrays() -> None:
    grey = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    for array in (grey, grey[..., None], grey.astype(np.uint16) * 257):
        pixels = prepare(array, 8, 8)
        assert np.array_equal(pixels[..., 0], grey) and np.array_equal(pixels[..., 2], grey)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.full((4, 4, 3), 2.0, np.float32),
        np.full((4, 4, 3), np.nan, np.float32),
        np.zeros((4, 4, 3), np.int64),
        np.zeros((4, 4, 3), np.complex64),
    ],
)
def test_unusable_arrays_are_input_errors(array: np.ndarray) -> None:
    with pytest.raises(InputError):
        prepare(array, SIZE, SIZE)


def test_unsupported_source_type() -> None:
    with pytest.raises(InputError, match="int"):
        prepare(42, SIZE, SIZE)


# ---- hostile and broken inputs: a one-line CapgenError each, never anything else ----


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        prepare(path, SIZE, SIZE)


def test_truncated_jpeg_is_refused_not_half_decoded(tmp_path: Path) -> None:
    whole = io.BytesIO()
    _photo(6, (200, 200)).save(whole, "JPEG", quality=95)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"truncated|decode"):
        prepare(path, SIZE, SIZE)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("just some notes\n")
    with pytest.raises(ImageError, match="not an image"):
        prepare(path, SIZE, SIZE)


def test_html_error_page_saved_as_png(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(ImageError, match="HTML"):
        prepare(path, SIZE, SIZE)


@pytest.mark.parametrize(
    "head,message",
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"%PDF-1.7\n%\xe2\xe3", "PDF"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n", "Git LFS"),
    ],
)
def test_common_non_images_are_named(head: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        prepare(head + b"\0" * 64, SIZE, SIZE)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("width,height", [(30000, 30000), (12000, 9000)])
def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, width: int, height: int
) -> None:
    """30000x30000 trips Pillow's own hard limit; 12000x9000 (108 Mpx) only capgen's."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(width, height))
    # A fresh process, so its peak RSS says whether anything was decoded (Pillow's
    # buffers are C allocations that tracemalloc cannot see).
    script = (
        "import resource, sys\n"
        "from capgen.runtime.preprocess import prepare\n"
        "from capgen.runtime.errors import ImageTooLargeError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    prepare({str(path)!r}, 29, 29)\n"
        "except ImageTooLargeError as err:\n"
        "    print('refused', err)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused image is")
    assert int(lines[1].split()[1]) < 50 * 1024  # decoding would need 0.3-2.7 GB


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = _save(_photo(7, (100, 100)), tmp_path / "photo.png")
    with pytest.raises(ImageTooLargeError):
        prepare(path, SIZE, SIZE, max_pixels=5000)
    with pytest.raises(ImageTooLargeError):
        prepare(Image.open(path), SIZE, SIZE, max_pixels=5000)


def test_directory_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory"):
        prepare(tmp_path, SIZE, SIZE)
    with pytest.raises(InputError, match="no such file"):
        prepare(tmp_path / "missing.jpg", SIZE, SIZE)


def _outcome(path: Path) -> str:
    """What prepare(path) does: "ok", or the InputError's one line."""
    try:
        prepare(path, SIZE, SIZE)
    except InputError as error:
        return f"InputError: {error}"
    return "ok"


def _outcome_as(uid: int | None, path: Path) -> str:
    """_outcome(path) in this process, or (uid given) in a forked child running as that user.

    Root reads a chmod 000 file anyway (and CI runs as root), so as root the
    read is tried by a child that has given up root: forked, not executed, so
    it runs the capgen already imported here, whatever the interpreter's path
    allows another user to run.
    """
    if uid is None:
        return _outcome(path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, try, report, leave without running pytest's cleanup
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, _outcome(path).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answer = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while select.select([pipe], [], [], 60)[0]:  # a guard: a hung child fails, not hangs
            chunk = pipe.read(4096)
            if not chunk:
                break
            answer += chunk
        else:
            os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert answer, "the child that tried the read reported nothing"
    return answer.decode()


def test_unreadable_file() -> None:
    """A file the caller may not read: one line, "permission denied" (as root too)."""
    uid = _nobody() if os.geteuid() == 0 else None
    # Under /tmp, which every user can reach (pytest's own folders are root's alone), in a
    # folder anyone may enter, so nothing but the file's own mode stops the read.
    folder = Path(tempfile.mkdtemp(prefix="capgen-unreadable-"))
    try:
        folder.chmod(0o711)
        readable = _save(_photo(), folder / "open.png")
        readable.chmod(0o644)
        secret = _save(_photo(), folder / "secret.png")
        secret.chmod(0)
        assert (
            _outcome_as(uid, readable) == "ok"
        )  # the reader gets this far: only the mode stops it
        assert _outcome_as(uid, secret) == "InputError: permission denied"
    finally:
        shutil.rmtree(folder)


def _nobody() -> int:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return 65534  # the conventional overflow id


def test_file_object_that_refuses_to_be_read() -> None:
    class Forbidden(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise PermissionError(13, "Permission denied")

    with pytest.raises(InputError, match="permission"):
        prepare(Forbidden(), SIZE, SIZE)


def test_text_mode_file_object(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x")
    with path.open() as handle, pytest.raises(InputError, match="binary"):
        prepare(handle, SIZE, SIZE)


def test_non_utf8_file_name(tmp_path: Path) -> None:
    name = os.fsdecode(b"\xff\xfe photo.png")
    path = _save(_photo(8), tmp_path / name)
    assert prepare(path, SIZE, SIZE).shape == (SIZE, SIZE, 3)
    assert prepare(os.fsencode(path).decode("utf-8", "surrogateescape"), SIZE, SIZE).shape == (
        SIZE,
        SIZE,
        3,
    )


def test_errors_are_all_capgen_errors_with_one_line(tmp_path: Path) -> None:
    bad = [
        b"",
        b"GIF89a",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        b"BM" + b"\xff" * 60,
        b"\xff\xd8\xff" + b"\0" * 100,
    ]
    for data in bad:
        with pytest.raises(CapgenError) as caught:
            prepare(data, SIZE, SIZE)
        assert "\n" not in str(caught.value)
