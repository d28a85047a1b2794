"""Issue 24, findings 1-4 and two "also seen" lines: a shared optimised-graph cache nobody can poison.

The attacks came from a red team running capgen as root with a cache other
users could reach. Each test here failed on 46f58bb:
1. writes outside: a link or another user's folder as `optimized/`, a
   group-writable one, a umask that made folders group-writable, an entry of
   another user's replaced;
2. unverified bytes: a companion changed in place (size and mtime kept) or
   swapped in around onnxruntime's load, a graph changed in place;
3. SIGBUS: the mapped companion truncated under a live session;
4. leftovers: Ctrl-C while optimising, orphans never pruned while the cache hits;
and `capgen info` calling a folder ok that the loader refuses, and the
full-cache warning split over two lines by onnxruntime's message.

"Another user" is uid 12345 (os.chown needs root, so those tests skip otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import Run, assert_one_line_error, write_photos
from onnx import TensorProto, helper, numpy_helper
from tiny_model import write_tiny_model

from capgen.runtime import home as capgen_home_module
from capgen.runtime import integrity as integrity_module
from capgen.runtime.errors import ModelIntegrityError
from capgen.runtime.graph_cache import _optimized_cache_path
from capgen.runtime.integrity import verify_file
from capgen.runtime.manifest import load_manifest
from capgen.runtime.session import OnnxSession

OTHER_UID = 12345
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving a file to another user (os.chown) needs root"
)


@pytest.fixture()
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CAPGEN_HOME, and the once-per-process warning re-armed so each test sees its line."""
    home = tmp_path / "home"
    monkeypatch.setenv("CAPGEN_HOME", str(home))
    monkeypatch.delenv("CAPGEN_NO_CACHE", raising=False)
    monkeypatch.setattr(capgen_home_module, "_warned", threading.Event())
    return home


def _table_graph(path: Path, rows: int, columns: int = 256, seed: int = 0) -> np.ndarray:
    """A graph that looks up rows of one table (the decoder step's word gates, in small)."""
    table = np.random.default_rng(seed).standard_normal((rows, columns)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "word"], ["gates"], axis=0)],
        "gate_table",
        [helper.make_tensor_value_info("word", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("gates", TensorProto.FLOAT, ["N", columns])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return table


def _session(path: Path) -> OnnxSession:
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    return OnnxSession(path, ["word"], ["gates"], cache_key=key)


def _gates(session: OnnxSession, words: np.ndarray) -> np.ndarray:
    (gates,) = session.run({"word": words.astype(np.int64)})
    return gates


def _entry(path: Path) -> Path:
    return _optimized_cache_path(hashlib.sha256(path.read_bytes()).hexdigest())


def _companion(path: Path) -> Path:
    cached = _entry(path)
    (companion,) = cached.parent.glob(f"{cached.stem}.*.data")
    return companion


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links not followed) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _warnings(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert all(line.startswith("capgen: warning: ") for line in lines), stderr
    return lines


# 1. Writes outside, and what capgen writes is not at the umask's mercy


def test_optimized_as_a_link_is_never_written_through(
    tmp_path: Path, cache_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`optimized` a link to a private folder: nothing there is deleted or written, one warning."""
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    (private / "keep.txt").write_bytes(b"root's own file\n")
    old = time.time() - 7200  # stale by every rule capgen prunes by
    (private / f"{'0' * 32}.{'1' * 16}.data").write_bytes(b"x" * 100)
    for name in os.listdir(private):
        os.utime(private / name, (old, old))
    before = _tree(private)
    cache_home.mkdir()
    (cache_home / "optimized").symlink_to(private)
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64)

    for _ in range(2):
        words = np.array([1, 63])
        np.testing.assert_array_equal(_gates(_session(path), words), table[words])

    assert _tree(private) == before
    (line,) = _warnings(capsys.readouterr().err)
    assert "symbolic link" in line, line


@as_root
def test_another_users_cache_folder_is_neither_written_nor_trusted(
    tmp_path: Path, cache_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root's capgen in a folder uid 12345 owns: no entry read from it, nothing written, one line."""
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64, seed=1)
    _session(path)  # a genuine entry, then the folder changes hands
    companion = _companion(path)
    with companion.open("r+b") as handle:  # their weights, in root's own file
        handle.write(np.zeros_like(table).tobytes())
    folder = cache_home / "optimized"
    os.chown(folder, OTHER_UID, OTHER_UID)
    before = _tree(folder)

    words = np.array([0, 5, 63])
    np.testing.assert_array_equal(_gates(_session(path), words), table[words])

    assert _tree(folder) == before
    (line,) = _warnings(capsys.readouterr().err)
    assert f"uid {OTHER_UID}" in line, line


def test_a_group_writable_cache_folder_is_not_used(
    tmp_path: Path, cache_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anyone in the group could swap entries in a 0775 folder: it costs the cache, never a caption."""
    folder = cache_home / "optimized"
    folder.mkdir(parents=True)
    folder.chmod(0o775)
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64, seed=2)

    words = np.array([2, 3])
    np.testing.assert_array_equal(_gates(_session(path), words), table[words])

    assert os.listdir(folder) == []
    (line,) = _warnings(capsys.readouterr().err)
    assert "writable by other users" in line, line


def test_cache_folders_and_entries_get_fixed_modes_whatever_the_umask(
    tmp_path: Path, cache_home: Path
) -> None:
    """Under umask 002 capgen made `optimized/` 0775 and entries 0664 itself."""
    path = tmp_path / "step.onnx"
    _table_graph(path, 64, seed=3)
    previous = os.umask(0o002)
    try:
        _session(path)
    finally:
        os.umask(previous)
    folder = cache_home / "optimized"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    entries = list(folder.iterdir())
    assert {p.suffix for p in entries} == {".onnx", ".data"}
    for entry in entries:
        assert stat.S_IMODE(entry.stat().st_mode) == 0o644, entry


@as_root
def test_an_entry_another_user_owns_is_never_replaced(
    tmp_path: Path, cache_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """capgen rewrites only files it wrote: another user's entry is a miss, and stays theirs."""
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64, seed=4)
    _session(path)
    cached = _entry(path)
    os.chown(cached, OTHER_UID, OTHER_UID)
    before = cached.read_bytes()

    words = np.array([9])
    np.testing.assert_array_equal(_gates(_session(path), words), table[words])

    status = cached.stat()
    assert (status.st_uid, cached.read_bytes()) == (OTHER_UID, before)
    assert len(_warnings(capsys.readouterr().err)) == 1


@as_root
def test_a_stamp_renamed_in_another_users_folder_vouches_for_nothing(
    tmp_path: Path, cache_home: Path
) -> None:
    """The same class in `verified/`: whoever owns the folder can rename root's stamp to the
    name that vouches for their changed file (same size), and root then skipped the sha256."""
    folder = write_tiny_model(tmp_path / "model").folder
    name = "vocabulary.json"
    path, record = folder / name, load_manifest(folder).files[name]
    verify_file(path, record)
    (stamp,) = (cache_home / "verified").iterdir()
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"', b"'", 1))  # their change, same size
    status = path.stat()
    os.chown(cache_home / "verified", OTHER_UID, OTHER_UID)
    stamp.rename(integrity_module._stamp_path(path, record, status.st_size, status.st_mtime_ns))

    with pytest.raises(ModelIntegrityError, match="sha256"):
        verify_file(path, record)


def test_verified_as_a_link_is_never_written_through(tmp_path: Path, cache_home: Path) -> None:
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    cache_home.mkdir()
    (cache_home / "verified").symlink_to(private)
    folder = write_tiny_model(tmp_path / "model").folder
    manifest = load_manifest(folder)

    verify_file(folder / "vocabulary.json", manifest.files["vocabulary.json"])

    assert os.listdir(private) == []


# 2. Bytes that were not verified are never run


def test_a_companion_changed_in_place_is_a_miss(tmp_path: Path, cache_home: Path) -> None:
    """Same size, same mtime, other weights: every caption changed silently."""
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64, seed=5)
    _session(path)
    companion = _companion(path)
    status = companion.stat()
    with companion.open("r+b") as handle:
        handle.write(np.zeros_like(table).tobytes())
    os.utime(companion, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert companion.stat().st_size == status.st_size

    words = np.array([0, 31, 63])
    np.testing.assert_array_equal(_gates(_session(path), words), table[words])


def test_a_graph_changed_in_place_is_a_miss(tmp_path: Path, cache_home: Path) -> None:
    """A table small enough to stay inside the graph: its bytes changed there change the output."""
    path = tmp_path / "small.onnx"
    table = _table_graph(path, 4, columns=8, seed=6)
    _session(path)
    cached = _entry(path)
    data = cached.read_bytes()
    assert data.count(table.tobytes()) == 1
    cached.write_bytes(data.replace(table.tobytes(), np.ones_like(table).tobytes()))

    words = np.array([0, 3])
    np.testing.assert_array_equal(_gates(_session(path), words), table[words])


@pytest.fixture()
def swap_companion_during_load(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Path, bytes], None]:
    """Arm: at the next session load, put other bytes at the companion's name, then put it back."""
    real = ort.InferenceSession
    armed: list[tuple[Path, bytes]] = []

    def swapping(*args: object, **kwargs: object) -> ort.InferenceSession:
        if not armed:
            return real(*args, **kwargs)
        companion, bytes_ = armed.pop()
        aside = companion.with_name("aside")
        companion.rename(aside)
        companion.write_bytes(bytes_)
        try:
            return real(*args, **kwargs)
        finally:
            companion.unlink()
            aside.rename(companion)  # the checked inode is back: an after-load check passes

    monkeypatch.setattr(ort, "InferenceSession", swapping)
    return lambda companion, bytes_: armed.append((companion, bytes_))


def test_a_companion_swapped_around_the_load_is_not_what_runs(
    tmp_path: Path, cache_home: Path, swap_companion_during_load: Callable[[Path, bytes], None]
) -> None:
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64, seed=7)
    _session(path)
    swap_companion_during_load(_companion(path), np.zeros_like(table).tobytes())

    session = _session(path)

    words = np.array([1, 2, 62])
    np.testing.assert_array_equal(_gates(session, words), table[words])


# 3. SIGBUS

_TRUNCATE_UNDER_A_LIVE_SESSION = """
import hashlib, sys
from pathlib import Path
import numpy as np
from capgen.runtime.graph_cache import _optimized_cache_path
from capgen.runtime.session import OnnxSession

path = Path(sys.argv[1])
table = np.load(sys.argv[2])
key = hashlib.sha256(path.read_bytes()).hexdigest()
OnnxSession(path, ["word"], ["gates"], cache_key=key)
session = OnnxSession(path, ["word"], ["gates"], cache_key=key)  # a hit
cached = _optimized_cache_path(key)
companions = list(cached.parent.glob(cached.stem + ".*.data"))
for companion in companions:
    with open(companion, "r+b") as handle:
        handle.truncate(0)
words = np.arange(len(table) - 1, -1, -97, dtype=np.int64)
(gates,) = session.run({"word": words})
print(len(companions), "same" if np.array_equal(gates, table[words]) else "different")
"""


def test_truncating_the_cached_companion_does_not_kill_a_live_session(
    tmp_path: Path, cache_home: Path
) -> None:
    """A long-running `capgen serve` died of SIGBUS, without a line, when its mapped file shrank."""
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 4096, seed=8)  # 4 MB: many pages beyond the truncation
    np.save(tmp_path / "table.npy", table)
    done = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_UNDER_A_LIVE_SESSION, path, tmp_path / "table.npy"],
        capture_output=True,
        env={**os.environ, "CAPGEN_HOME": str(cache_home)},
        timeout=120,
        check=False,
    )
    died = f" (signal {signal.Signals(-done.returncode).name})" if done.returncode < 0 else ""
    assert done.returncode == 0, f"exit {done.returncode}{died}: {done.stderr.decode()}"
    assert done.stdout.split() == [b"1", b"same"]


# 4. Leftovers


def test_ctrl_c_while_optimising_leaves_nothing(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C once onnxruntime has written the companion: an 84 MB file stayed, never pruned."""
    real = ort.InferenceSession

    def interrupted(*args: object, **kwargs: object) -> ort.InferenceSession:
        session = real(*args, **kwargs)
        options = kwargs.get("sess_options")
        if isinstance(options, ort.SessionOptions) and options.optimized_model_filepath:
            raise KeyboardInterrupt
        return session

    monkeypatch.setattr(ort, "InferenceSession", interrupted)
    path = tmp_path / "step.onnx"
    _table_graph(path, 64, seed=9)

    with pytest.raises(KeyboardInterrupt):
        _session(path)

    assert os.listdir(cache_home / "optimized") == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_orphans_are_pruned_when_the_cache_hits(tmp_path: Path, cache_home: Path) -> None:
    """A killed writer's work and stale orphaned companions go on a hit too, not only on a miss."""
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64, seed=10)
    _session(path)
    cached = _entry(path)
    folder = cached.parent
    old = time.time() - 7200
    orphans = [
        folder / f"{cached.stem}.{'1' * 16}.{'a' * 64}.data",  # committed, graph never came
        folder / f"{cached.stem}.{'2' * 16}.data",  # capgen before issue 24
    ]
    for orphan in orphans:
        orphan.write_bytes(b"x" * 1000)
        os.utime(orphan, (old, old))
    killed = folder / f".{cached.name}.{_dead_pid()}.abc123.partial"  # a killed writer's work
    killed.mkdir()
    (killed / "graph.onnx").write_bytes(b"x" * 1000)

    words = np.array([4])
    np.testing.assert_array_equal(_gates(_session(path), words), table[words])  # a hit

    assert not killed.exists()
    assert not [orphan for orphan in orphans if orphan.exists()]
    assert cached.is_file() and _companion(path).is_file()


# Also seen


_COMPANION_CANNOT_BE_WRITTEN = """
import hashlib, resource, signal, sys
from pathlib import Path
import numpy as np
from capgen.runtime.session import OnnxSession

path = Path(sys.argv[1])
table = np.load(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))  # the graph fits, its companion not
key = hashlib.sha256(path.read_bytes()).hexdigest()
session = OnnxSession(path, ["word"], ["gates"], cache_key=key)
words = np.array([5, 6])
print("same" if np.array_equal(session.run({"word": words})[0], table[words]) else "different")
"""


def test_a_full_cache_disk_warns_in_one_line(tmp_path: Path, cache_home: Path) -> None:
    """onnxruntime's message for a companion it could not write ends in a newline: two lines."""
    path = tmp_path / "step.onnx"
    table = _table_graph(path, 64, seed=11)  # a 64 kB companion
    np.save(tmp_path / "table.npy", table)
    done = subprocess.run(
        [sys.executable, "-c", _COMPANION_CANNOT_BE_WRITTEN, path, tmp_path / "table.npy"],
        capture_output=True,
        env={**os.environ, "CAPGEN_HOME": str(cache_home)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.split() == [b"same"]
    (line,) = _warnings(done.stderr.decode())
    assert line.startswith("capgen: warning: cannot write the cache"), line
    assert "external initializers" in line and "/proc/self" not in line, line


def test_warnings_are_one_line_whatever_the_reason(
    cache_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : failed\nProtobuf serialization failed")
    capgen_home_module.warn_cache_unwritable(Path("/cache\nfolder"), reason)
    written = capsys.readouterr().err
    assert written.count("\n") == 1 and written.endswith("\n"), written
    assert "Protobuf serialization failed" in written


def test_info_fails_a_graph_the_loader_refuses_for_external_data(run: Run, tmp_path: Path) -> None:
    """Every file matched its manifest, so info said ok; `caption` refused the folder."""
    folder = write_tiny_model(tmp_path / "model").folder
    encoder = folder / "encoder.onnx"
    model = onnx.load(str(encoder))
    for index, tensor in enumerate(model.graph.initializer):  # raw bytes: they can move out
        raw = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)
        model.graph.initializer[index].CopyFrom(raw)
    onnx.save(
        model,
        str(encoder),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name in ("encoder.onnx", "w.bin"):  # listed with their true sha256, as an author would
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    caption = run("caption", "-m", folder, write_photos(tmp_path / "photos", 1, seed=3)[0])
    assert_one_line_error(caption, 3, "external data")

    done = run("info", folder)

    assert_one_line_error(done, 3, "encoder.onnx", "external data")
    report = done.stdout.decode()
    (encoder_line,) = [line for line in report.splitlines() if line.split()[:1] == ["encoder.onnx"]]
    assert "FAILED" in encoder_line and "external data" in encoder_line, report


@pytest.fixture(autouse=True)
def _no_leaks(cache_home: Path) -> Iterator[None]:
    """No test here may leave a private copy behind in the temporary directory."""

    def copies() -> set[str]:
        folder = Path(tempfile.gettempdir())
        return {p.name for p in folder.glob(f"capgen-session-{os.getpid()}-*")}

    before = copies()
    yield
    assert copies() <= before
