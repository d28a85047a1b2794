"""How sessions are loaded (issue 14, memory): the checked open file, not bytes; the cache hit reads no source.

onnxruntime's Python session keeps the bytes it is given for its whole life,
so loading from bytes held every graph twice (the 40 MB decoder step: +40 MB
of peak RSS). These tests pin the properties that replaced it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_model import random_weights

from capgen.convert.step_graph import build_projection_graph
from capgen.runtime.atomic_write import STALE_AFTER_SECONDS
from capgen.runtime.encoder import Encoder
from capgen.runtime.errors import ModelError
from capgen.runtime.graph_cache import _optimized_cache_path
from capgen.runtime.manifest import load_manifest
from capgen.runtime.onnx_external_data import external_data_locations, single_file_graph
from capgen.runtime.session import OnnxSession


def _projection(path: Path, seed: int = 0) -> Path:
    onnx.save(build_projection_graph(random_weights(seed=seed)), path)
    return path


def test_onnxruntime_loads_the_checked_file_even_if_the_path_is_swapped(tmp_path: Path) -> None:
    """What passed the external-data check is what runs: the open file, not whatever `path` names later."""
    checked = _projection(tmp_path / "photo_projection.onnx")
    (tmp_path / "other.onnx").write_bytes(b"not a graph")
    with single_file_graph(checked) as graph:
        os.replace(tmp_path / "other.onnx", checked)  # swapped in after the check
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["features"]


def test_sessions_are_not_made_from_bytes(tmp_path: Path) -> None:
    """Bytes handed to onnxruntime stay referenced by its session object for as long as it lives."""
    path = _projection(tmp_path / "photo_projection.onnx")
    with single_file_graph(path) as graph:
        assert isinstance(graph, str) and Path(graph).samefile(path)
    session = OnnxSession(path, ["features"], ["photo"])
    assert not isinstance(getattr(session._session, "_model_bytes", None), bytes)


def test_unreadable_graph_is_one_line_model_error(tmp_path: Path) -> None:
    with (
        pytest.raises(ModelError, match="cannot read"),
        single_file_graph(tmp_path / "absent.onnx"),
    ):
        pass


def test_cache_hit_does_not_read_the_source_graph(tmp_path: Path) -> None:
    """The key holds the source's verified sha256, so a hit needs (and opens) only the cached entry."""
    path = _projection(tmp_path / "photo_projection.onnx")
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    OnnxSession(path, ["features"], ["photo"], cache_key=key)
    assert _optimized_cache_path(key).is_file()
    path.unlink()  # a read of the source would now fail
    session = OnnxSession(path, ["features"], ["photo"], cache_key=key)
    assert [node.name for node in session._session.get_outputs()] == ["photo"]


def test_cached_entry_with_external_data_is_a_miss(tmp_path: Path) -> None:
    """An entry is trusted for who wrote it, not for its bytes: one naming a side file is rebuilt."""
    path = _projection(tmp_path / "photo_projection.onnx")
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    cached = _optimized_cache_path(key)
    cached.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(
        build_projection_graph(random_weights(seed=1)),
        cached,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="side.bin",
        size_threshold=0,
    )
    OnnxSession(path, ["features"], ["photo"], cache_key=key)
    # Rebuilt: it names at most a companion capgen wrote for it, never side.bin.
    assert external_data_locations(cached.read_bytes()) <= _companions_of(cached)


def _companions_of(cached: Path) -> set[str]:
    return {p.name for p in cached.parent.glob(f"{cached.stem}.*.data")}


def _gather_table(path: Path, rows: int = 1024, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A graph shaped like the decoder step's word-gate lookup: Gather rows of a large table."""
    table = np.random.default_rng(seed).standard_normal((rows, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "word"], ["gates"], axis=0)],
        "gate_table",
        [helper.make_tensor_value_info("word", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("gates", TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path, table


def _mapped_files() -> set[str]:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        return {line.split(maxsplit=5)[-1].strip() for line in maps if line.count(" ") >= 5}


def test_a_cached_table_is_memory_mapped_from_a_private_copy_of_its_companion(
    tmp_path: Path,
) -> None:
    """The decoder step's 31 MB gate table: memory-mapped, not copied into the session.

    Only the rows of the words a caption uses then become resident (a cold
    caption with the 7,577-word decoder: 28 MB less peak RSS, measured). What
    is mapped is the private, already unlinked copy that was hashed (issue 24:
    the cache's own file could be truncated under the session, SIGBUS).
    """
    path, table = _gather_table(tmp_path / "step.onnx")
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    OnnxSession(path, ["word"], ["gates"], cache_key=key)  # writes the entry
    cached = _optimized_cache_path(key)
    (companion,) = _companions_of(cached)
    assert external_data_locations(cached.read_bytes()) == {companion}

    session = OnnxSession(path, ["word"], ["gates"], cache_key=key)  # a hit
    mapped = _mapped_files()
    assert str(cached.parent / companion) not in mapped
    assert any(name.endswith(f"/{companion} (deleted)") for name in mapped), mapped
    words = np.array([3, 1000, 3], dtype=np.int64)
    (gates,) = session.run({"word": words})
    np.testing.assert_array_equal(gates, table[words])


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_companion_another_user_wrote_is_a_miss(tmp_path: Path) -> None:
    """Like every entry, the companion is trusted for who wrote it: another user's is never mapped."""
    path, table = _gather_table(
        tmp_path / "step.onnx", seed=1
    )  # its own entry in this module's cache
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    OnnxSession(path, ["word"], ["gates"], cache_key=key)
    cached = _optimized_cache_path(key)
    (companion,) = _companions_of(cached)
    planted = cached.parent / companion
    planted.write_bytes(np.zeros_like(table).tobytes())  # their weights, same size
    os.chown(planted, 65534, 65534)

    session = OnnxSession(path, ["word"], ["gates"], cache_key=key)
    words = np.array([5], dtype=np.int64)
    np.testing.assert_array_equal(session.run({"word": words})[0], table[words])
    assert str(planted) not in _mapped_files()
    (named,) = external_data_locations(cached.read_bytes())  # rebuilt with a companion of its own
    assert named != companion


def test_a_companion_replaced_by_a_link_is_never_followed(tmp_path: Path) -> None:
    """A link in the companion's place (to weights that pass every owner check) is a miss."""
    path, table = _gather_table(tmp_path / "step.onnx", seed=3)
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    OnnxSession(path, ["word"], ["gates"], cache_key=key)
    cached = _optimized_cache_path(key)
    (companion,) = _companions_of(cached)
    planted = tmp_path / "their-weights.data"
    planted.write_bytes(np.zeros_like(table).tobytes())  # this user's own file: owner checks pass
    (cached.parent / companion).unlink()
    (cached.parent / companion).symlink_to(planted)

    session = OnnxSession(path, ["word"], ["gates"], cache_key=key)
    words = np.array([7], dtype=np.int64)
    np.testing.assert_array_equal(session.run({"word": words})[0], table[words])
    assert str(planted) not in _mapped_files()


def test_stale_companions_without_their_graph_are_pruned(tmp_path: Path) -> None:
    """Left by a killed writer or a pruned entry; a fresh one may still be getting its graph."""
    path, _ = _gather_table(tmp_path / "step.onnx", seed=2)
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    folder = _optimized_cache_path(key).parent
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / f"{'0' * 32}.{'1' * 16}.data"
    fresh = folder / f"{'0' * 32}.{'2' * 16}.data"
    for orphan in (stale, fresh):
        orphan.write_bytes(b"x" * 100)
    old = time.time() - 2 * STALE_AFTER_SECONDS
    os.utime(stale, (old, old))

    OnnxSession(path, ["word"], ["gates"], cache_key=key)  # writing an entry prunes

    assert not stale.exists() and fresh.exists()
    assert _companions_of(_optimized_cache_path(key))  # the new entry's own is kept


def test_encoder_plans_no_memory_pattern(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """The encoder's one-block activation plan cost ~40 MB of peak RSS at the same speed."""
    manifest = load_manifest(tiny_model.folder)
    encoder = Encoder(manifest.path(manifest.encoder.file), manifest.encoder)
    assert encoder._session._session.get_session_options().enable_mem_pattern is False


def test_load_errors_name_the_users_file_not_the_open_one(tmp_path: Path) -> None:
    """onnxruntime names the file it read (/proc/self/fd/N); the one-line error names the model's file."""
    graph = build_projection_graph(random_weights())
    graph.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "photo_projection.onnx"
    onnx.save(graph, path)
    with pytest.raises(ModelError) as raised:
        OnnxSession(path, ["features"], ["photo"])
    message = str(raised.value)
    assert "/proc/self" not in message and message.count(str(path)) == 2, message


def test_a_fifo_in_a_graphs_place_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "encoder.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelError), single_file_graph(fifo):
        pass
