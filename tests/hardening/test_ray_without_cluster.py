"""capgen on Ray without a cluster: issue 24 findings 13-15 and issue 26 item 8, on the driver.

Every run that reaches for a cluster is given a port on 127.0.0.1 nobody
listens at, so a check that comes after connecting would say "cannot reach"
instead: each test asserts the check that must come first.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, assert_one_line_error, write_photos
from tiny_model import TinyModel

from capgen.cli_support.exit_codes import ExitCode, exit_code_for
from capgen.runtime.errors import CapgenError, InputError, ModelIntegrityError

pytest.importorskip("ray", reason="needs the ray extra: pip install 'capgen[ray]'")
pytest.importorskip("pyarrow", reason="needs the ray extra: pip install 'capgen[ray]'")


def _nobody_listens() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# Finding 13: model errors are the local command's one line and exit 3.


def test_fast_decoder_without_a_fast_step_is_refused_before_ray(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    (photo,) = write_photos(tmp_path / "photos", 1, seed=1)
    out = tmp_path / "out.jsonl"
    done = run("ray", "caption", photo, "-o", out, "-m", hardening_model.folder,
               "--fast-decoder", "--address", _nobody_listens())  # fmt: skip
    assert_one_line_error(done, ExitCode.MODEL, "no fast decoder step")
    assert not out.exists()


def test_a_corrupt_shared_model_is_refused_before_ray(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(hardening_model.folder, folder)
    step = folder / "decoder_step.onnx"
    data = bytearray(step.read_bytes())
    data[len(data) // 2] ^= 0xFF
    step.write_bytes(bytes(data))
    (photo,) = write_photos(tmp_path / "photos", 1, seed=2)
    done = run("ray", "caption", photo, "-o", tmp_path / "out.jsonl", "-m", folder,
               "--shared-model", "--address", _nobody_listens())  # fmt: skip
    assert_one_line_error(done, ExitCode.MODEL, "decoder_step.onnx")


def _ray_errors_around(error: CapgenError) -> list[BaseException]:
    from ray.exceptions import ActorDiedError, RayTaskError, UserCodeException

    task = RayTaskError("CaptionBatches.__init__", "Traceback ...\n" * 80, error)
    wrapped = RayTaskError("MapWorker.__init__", "Traceback ...", UserCodeException("udf"))
    wrapped.__cause__ = error
    return [
        task,
        task.as_instanceof_cause(),
        ActorDiedError(task),
        ActorDiedError(wrapped),
    ]


@pytest.mark.parametrize("index", range(4))
def test_an_actor_side_capgen_error_is_its_own_one_line(index: int) -> None:
    from capgen.ray.cli import job_failure

    original = ModelIntegrityError("/n/ray-models/abc: this node's copy does not match")
    failure = job_failure(_ray_errors_around(original)[index])
    assert isinstance(failure, ModelIntegrityError) and exit_code_for(failure) == ExitCode.MODEL
    assert str(failure) == str(original)


def test_an_actor_error_known_only_as_text_keeps_its_kind() -> None:
    from ray.exceptions import RayError

    from capgen.ray.cli import job_failure

    text = (
        "The actor died because of an error raised in its creation task, ray::MapWorker\n"
        "  File x.py, line 3\n"
        "capgen.runtime.errors.ModelError: /m: this model has no fast decoder step\n"
    )
    failure = job_failure(RayError(text))
    assert exit_code_for(failure) == ExitCode.MODEL
    assert str(failure) == "/m: this model has no fast decoder step"
    other = job_failure(RayError("node died\n" * 50))
    assert isinstance(other, InputError) and "\n" not in str(other)


# Finding 14: a file named like a part is read within a part's bounds, or refused.


def _bomb_part(folder: Path, rows: int, value: str) -> Path:
    """A Parquet file with capgen's schema: `rows` rows all naming one dictionary value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from capgen.ray.rows import COLUMNS, arrow_schema

    schema = arrow_schema()
    indices = pa.array([0] * rows, type=pa.int32())
    path_column = pa.DictionaryArray.from_arrays(indices, pa.array([value])).cast(pa.string())
    arrays = [
        path_column if name == "path" else pa.nulls(rows, type=schema.field(name).type)
        for name in COLUMNS
    ]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "part-20260101T000000-0123abcd-00000.parquet"
    pq.write_table(
        pa.Table.from_arrays(arrays, schema=schema), target, compression="zstd",
        use_dictionary=True, row_group_size=rows,
    )  # fmt: skip
    return target


def test_a_part_of_millions_of_rows_is_refused_unread(tmp_path: Path) -> None:
    from capgen.ray.output import open_ray_output

    part = _bomb_part(tmp_path / "out.parquet", 200_000, "/photos/" + "x" * 200)
    assert part.stat().st_size < 1_000_000  # small on disk, 40 MB and more once read whole
    before = part.read_bytes()
    with pytest.raises(InputError, match="not a capgen caption part") as refused:
        open_ray_output(tmp_path / "out.parquet", True, [])
    assert "\n" not in str(refused.value) and "200000 rows" in str(refused.value)
    assert part.read_bytes() == before


def test_a_part_with_an_overlong_value_is_refused(tmp_path: Path) -> None:
    from capgen.ray.output import open_ray_output

    _bomb_part(tmp_path / "out.parquet", 1000, "x" * 300_000)
    with pytest.raises(InputError, match="300000 characters"):
        open_ray_output(tmp_path / "out.parquet", True, [])


def test_a_bomb_part_is_one_line_before_ray(
    run: Run, tmp_path: Path, hardening_model: TinyModel
) -> None:
    _bomb_part(tmp_path / "out.parquet", 200_000, "/p/" + "y" * 100)
    (photo,) = write_photos(tmp_path / "photos", 1, seed=3)
    done = run("ray", "caption", photo, "-o", tmp_path / "out.parquet", "--resume",
               "-m", hardening_model.folder, "--address", _nobody_listens())  # fmt: skip
    assert_one_line_error(done, ExitCode.USAGE, "not a capgen caption part")


def test_parts_capgen_wrote_still_resume(tmp_path: Path) -> None:
    from capgen.ray.output import ROWS_PER_PART, open_ray_output
    from capgen.ray.rows import COLUMNS

    out = tmp_path / "out.parquet"
    sink = open_ray_output(out, False, [])
    for index in range(ROWS_PER_PART + 5):
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(path=f"/p/{index}.jpg", caption="a dog", log_probability=-1.0,
                   finished=True, tokens=[1, 2], timings=dict.fromkeys(
                       ("preprocess", "encode", "decode", "total"), 0.1))  # fmt: skip
        sink.write(row)
    sink.error("/p/bad.jpg", "cannot decode")
    sink.close()
    assert len(list(out.iterdir())) == 2
    resumed = open_ray_output(out, True, [])
    assert resumed.done == {f"/p/{index}.jpg" for index in range(ROWS_PER_PART + 5)}


# Finding 15: no --address is a new local Ray, never the one a stale file names.


def test_no_address_starts_a_new_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from capgen.ray import connect

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    connect.connect(None)
    connect.connect("auto")
    assert [call["address"] for call in calls] == ["local", "auto"]


# Issue 26 item 8: caption_dataset runs nothing itself; num_gpus reaches map_batches.


class _LazyDataset:
    """Records what caption_dataset asks of a dataset: fetching the schema would run it."""

    def __init__(self, known: list[str] | None) -> None:
        self.known = known
        self.executions = 0
        self.map_batches_kwargs: dict[str, Any] = {}

    def columns(self, fetch_if_missing: bool = True) -> list[str] | None:
        if self.known is None and fetch_if_missing:
            self.executions += 1  # Ray would execute the dataset to learn its columns
            return ["bytes", "path"]
        return self.known

    def map_batches(self, fn: Any, **kwargs: Any) -> _LazyDataset:
        self.map_batches_kwargs = kwargs
        return self


def test_caption_dataset_does_not_run_the_dataset() -> None:
    from capgen.ray.data import caption_dataset

    dataset = _LazyDataset(known=None)
    caption_dataset(dataset, "model")
    assert dataset.executions == 0
    assert dataset.map_batches_kwargs["fn_constructor_kwargs"]["column"] is None
    known = _LazyDataset(known=["bytes", "path"])
    caption_dataset(known, "model")
    assert known.map_batches_kwargs["fn_constructor_kwargs"]["column"] == "bytes"
    with pytest.raises(InputError, match="no column 'pixels'"):
        caption_dataset(_LazyDataset(known=["bytes"]), "model", column="pixels")


def test_caption_dataset_passes_num_gpus() -> None:
    from capgen.ray.data import caption_dataset

    dataset = _LazyDataset(known=["path"])
    caption_dataset(dataset, "model", num_gpus=1, num_cpus=2)
    assert dataset.map_batches_kwargs["num_gpus"] == 1
    assert dataset.map_batches_kwargs["num_cpus"] == 2
    with pytest.raises(InputError, match="num_gpus"):
        caption_dataset(dataset, "model", num_gpus=-1)


def test_constructor_arguments_stay_small() -> None:
    """A shipped model travels as a reference: the actors' arguments are a few KB, not the model."""
    import pickle

    from capgen.ray.data import caption_dataset
    from capgen.ray.model_store import ShippedModel

    dataset = _LazyDataset(known=["path"])
    caption_dataset(dataset, ShippedModel("m", "0" * 64, files="a reference"), num_gpus=0)
    assert "num_gpus" not in dataset.map_batches_kwargs  # 0 is Ray's default: not passed
    assert len(pickle.dumps(dataset.map_batches_kwargs["fn_constructor_kwargs"])) < 10_000
