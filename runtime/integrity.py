"""Is a model folder's file the one its manifest lists, and can this onnxruntime load it?

The checks that catch the classic ways a model folder breaks: a Git LFS
pointer cloned without LFS, a truncated download, an edited file, a link out
of the folder, a graph whose weights are not finite, a graph that needs a
newer onnxruntime than the one installed. The manifest itself (its schema,
parse and dump) is runtime/manifest.py's; this module only reads the records
it holds.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING

from capgen.runtime.errors import GitLfsPointerError, ModelError, ModelIntegrityError
from capgen.runtime.git_lfs import POINTER_PREFIX, is_pointer
from capgen.runtime.home import cache_enabled, capgen_home, record_stamp, stamp_present

if TYPE_CHECKING:
    from capgen.runtime.manifest import FileRecord, Manifest

_VERSION_PREFIX = re.compile(r"\d+(\.\d+)*")


def file_in_folder(folder: Path, name: str) -> Path:
    """`folder / name`, unless it is a symlink that leaves `folder` (ModelIntegrityError).

    Following such a link would read a file the model's author chose anywhere
    on the user's machine, and size or checksum mismatches would then leak
    what it holds; the message therefore says nothing about the link's target.
    """
    path = folder / name
    if path.is_symlink():
        try:
            inside = path.resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError):  # a looping link
            inside = False
        if not inside:
            raise ModelIntegrityError(
                f"{path}: is a symbolic link that leaves the model folder; capgen refuses it"
            )
    return path


def check_file_name(name: str) -> str:
    """A manifest's file name must be a plain, printable name of a file inside the folder.

    A NUL makes every path operation raise ValueError; `..` or a slash reaches
    outside the folder; control characters would reach the terminal in messages.
    """
    printable = name.isprintable() and name.strip() == name
    if not name or name in (".", "..") or Path(name).name != name or not printable:
        raise ModelError(
            f"manifest.json: file name {name!r} must be a plain name inside the folder"
        )
    return name


def refuse_non_folder(path: Path) -> None:
    """A file where a model folder belongs: say what it is and what to do, not just "not found"."""
    convert = (
        "convert the Keras model into a folder first: capgen convert model MODEL TOKENIZER -o DIR"
    )
    if not path.is_file():
        raise ModelError(f"{path}: model folder not found (or not a folder)")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(POINTER_PREFIX))
    except OSError:
        head = b""
    if is_pointer(head):
        raise GitLfsPointerError(
            f"{path}: is a Git LFS pointer, not a model (fetch the real file with `git lfs pull`); "
            f"then {convert}"
        )
    raise ModelError(f"{path}: is a file, not a capgen model folder; {convert}")


# Part of every stamp's key: bumped when verify_file checks more than before (2: the
# graphs' weights are finite), so a stamp from an older check does not skip the new one.
_VERIFY_RECIPE = "2"


def _stamp_path(path: Path, record: FileRecord, size: int, mtime_ns: int) -> Path:
    key = f"{path.resolve()}\0{size}\0{mtime_ns}\0{record.sha256}\0{_VERIFY_RECIPE}".encode(
        "utf-8", "surrogateescape"
    )
    return capgen_home() / "verified" / hashlib.sha256(key).hexdigest()


def _read_head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(len(POINTER_PREFIX))
    except OSError as exc:
        raise ModelIntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from None


def verify_file(path: Path, record: FileRecord, use_stamps: bool = True) -> None:
    """Size always; sha256 (and finite weights in a graph) unless a stamp says this exact
    (path, size, mtime) already matched.

    Hashing the 83 MB encoder takes ~0.1 s, too much for every start of the
    CLI; the stamp makes the second start free while a missing, truncated or
    rewritten file (which changes size or mtime) is still caught.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ModelIntegrityError(f"{path}: missing from the model folder") from None
    except OSError as exc:
        raise ModelIntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not S_ISREG(stat.st_mode):  # a folder or a FIFO in its place: opening it would fail or block
        raise ModelIntegrityError(f"{path}: is not a regular file")
    if stat.st_size != record.bytes:
        if is_pointer(_read_head(path)):
            raise GitLfsPointerError(
                f"{path}: is a Git LFS pointer, not the model file; run `git lfs pull`"
            )
        raise ModelIntegrityError(
            f"{path}: is {stat.st_size} bytes, manifest says {record.bytes} (truncated or replaced?)"
        )
    use_stamps = use_stamps and cache_enabled()
    stamp = _stamp_path(path, record, stat.st_size, stat.st_mtime_ns)
    if use_stamps and _stamped(stamp):
        return
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise ModelIntegrityError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if digest != record.sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 {digest[:12]}… does not match the manifest's {record.sha256[:12]}…"
        )
    if path.suffix == ".onnx":
        # A checksum only says the file is the one the manifest lists; a graph whose
        # weights are inf or NaN captions nothing. Checked once, like the sha256.
        from capgen.runtime.finite_weights import check_file_is_finite

        check_file_is_finite(path)
    if not use_stamps:
        return
    record_stamp(stamp.parent.name, stamp.name)  # never through a link; failures only warn


def _stamped(stamp: Path) -> bool:
    """A stamp counts only if this user or root wrote it, in a folder only they can change."""
    return stamp_present(stamp.parent.name, stamp.name)


def verify_files(
    manifest: Manifest, names: list[str] | None = None, use_stamps: bool = True
) -> None:
    """Check the listed files (default: all in the manifest): the onnxruntime they need first
    (one line naming the version instead of onnxruntime's own error), then size and sha256."""
    chosen = names if names is not None else list(manifest.files)
    for name in chosen:
        check_onnxruntime(manifest.path(name), manifest.files[name])
    for name in chosen:
        verify_file(manifest.path(name), manifest.files[name], use_stamps=use_stamps)


def _version_numbers(text: str) -> tuple[int, ...]:
    """(1, 22, 0) from '1.22.0', '1.24.1+openvino' or '1.20.0.dev2024'; () if none."""
    match = _VERSION_PREFIX.match(text)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def installed_onnxruntime() -> str:
    """The version of the onnxruntime module (whichever distribution installed it)."""
    import onnxruntime

    return str(getattr(onnxruntime, "__version__", "0"))


def onnxruntime_shortfall(record: FileRecord, installed: str) -> str | None:
    """The version `record` needs when `installed` is older, else None."""
    if record.onnxruntime is None:
        return None
    needed = record.onnxruntime.removeprefix(">=")
    if _version_numbers(installed) >= _version_numbers(needed):
        return None
    return needed


def check_onnxruntime(path: Path, record: FileRecord) -> None:
    """ModelError (exit 3) when the installed onnxruntime is older than the file needs."""
    if record.onnxruntime is None:
        return
    installed = installed_onnxruntime()
    needed = onnxruntime_shortfall(record, installed)
    if needed is not None:
        raise ModelError(
            f"{path}: needs onnxruntime >= {needed}, this is onnxruntime {installed}; "
            f"upgrade it: pip install 'onnxruntime>={needed}'"
        )
