"""The site's decoder step without its word-gate table: word_gates.onnx, the split, the browser's rows.

- The converter writes word_gates.onnx into every model folder (listed in the
  manifest as decoder.word_gates_file): its float32 factors, multiplied in
  float64 and rounded, are the step's table (row 0 zero when the padding id
  starts captions).
- `capgen export web` recomputes the table in the browser's order and keeps
  every differing entry as an exception: recomputation + exceptions is the
  table bit for bit; the step graph it ships, fed x_gates = table[word],
  gives the original step's outputs.
- web/capgen.mjs computes the same rows bit for bit in Node.
- The default model's INT8 site fits the issue's 45 MB.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from tiny_model import UNITS, WORDS, encoder_graph, random_weights
from web_helpers import REPO, SHARES_NODE, SiteCache, built_model, node

from capgen.convert.delimiters import Delimiters
from capgen.convert.model_folder import ModelFolderSpec, describe_encoder, write_model_folder
from capgen.convert.web_export import export_web
from capgen.convert.web_step import (
    SITE_STEP_FILE,
    WORD_GATES_DATA_FILE,
    WebStep,
    recompute_table,
    table_exceptions,
    web_step,
)
from capgen.runtime.manifest import load_manifest

# The issue's goal for the first visit of the default model's INT8 site (model files).
SITE_LIMIT_BYTES = 45_000_000


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _table(folder: Path) -> np.ndarray:
    """The word-gate table the model folder's step graph holds."""
    manifest = load_manifest(folder)
    return _initializers(manifest.path(manifest.decoder.step_file))["word_gate_table"]


def _converted(tmp_path: Path, start: str | None) -> Path:
    """A folder the converter writes (no TensorFlow): the tiny decoder; `start` None: padding starts."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    encoder = tmp_path / "user-encoder.onnx"
    onnx.save(encoder_graph(), str(encoder))
    words = list(WORDS)
    end_id = words.index("end")
    delimiters = (
        Delimiters.given(words, start, "end")
        if start is not None
        else Delimiters("missing", None, "end", end_id, "options")
    )
    spec = ModelFolderSpec(
        weights=random_weights(seed=3),
        vocabulary=words,
        delimiters=delimiters,
        max_length=8,
        sources={"model": {"name": "model_9.h5", "sha256": "ab" * 32}},
    )
    return write_model_folder(tmp_path / "model", spec, describe_encoder(encoder))


@pytest.mark.parametrize("start", ["start", None], ids=["start-word", "padding-start"])
def test_the_converter_writes_the_tables_factors(tmp_path: Path, start: str | None) -> None:
    folder = _converted(tmp_path, start)
    manifest = load_manifest(folder)
    name = manifest.decoder.word_gates_file
    assert name is not None and (folder / name).is_file()
    assert manifest.files[name].bytes == (folder / name).stat().st_size
    assert manifest.files[name].onnxruntime is not None
    gates = onnx.load(str(folder / name))
    props = {p.key: p.value for p in gates.metadata_props}
    assert props["capgen.word_gates.zero_padding_row"] == ("true" if start is None else "false")
    factors = _initializers(folder / name)
    assert all(factors[key].dtype == np.float32 for key in ("embedding", "kernel", "bias"))
    table = _table(folder)
    product = factors["embedding"].astype(np.float64) @ factors["kernel"].astype(np.float64)
    expected = (product + factors["bias"].astype(np.float64)).astype(np.float32)
    if start is None:
        expected[0] = 0.0
    assert np.array_equal(table.view(np.uint32), expected.view(np.uint32))
    # The graph itself (float32) gives the table's rows to float32 accuracy.
    words = np.arange(len(WORDS), dtype=np.int64)
    session = ort.InferenceSession(gates.SerializeToString(), providers=["CPUExecutionProvider"])
    (x_gates,) = session.run(None, {"word": words})
    rows = slice(1, None) if start is None else slice(None)
    np.testing.assert_allclose(x_gates[rows], table[rows], rtol=1e-5, atol=1e-5)


def _split(folder: Path) -> tuple[np.ndarray, WebStep]:
    manifest = load_manifest(folder)
    assert manifest.decoder.word_gates_file is not None
    step = manifest.path(manifest.decoder.step_file).read_bytes()
    gates = manifest.path(manifest.decoder.word_gates_file).read_bytes()
    return _table(folder), web_step(step, gates)


def _rebuilt_table(split: WebStep) -> np.ndarray:
    """The table from word_gates.bin alone: the browser's recomputation, then the exceptions."""
    layout = split.layout["word_gates"]["arrays"]
    data = split.word_gates

    def array(name: str) -> np.ndarray:
        entry = layout[name]
        dtype = "<i4" if entry["dtype"] == "int32" else "<f4"
        count = int(np.prod(entry["shape"], dtype=np.int64))
        return np.frombuffer(data, dtype, count, entry["offset"]).reshape(entry["shape"])

    table = recompute_table(array("embedding"), array("kernel"), array("bias"))
    table.reshape(-1)[array("exception_indices")] = array("exception_values")
    return table


@pytest.mark.parametrize("start", ["start", None], ids=["start-word", "padding-start"])
def test_recomputation_and_exceptions_give_the_table_bit_for_bit(
    tmp_path: Path, start: str | None
) -> None:
    table, split = _split(_converted(tmp_path, start))
    assert np.array_equal(_rebuilt_table(split).view(np.uint32), table.view(np.uint32))
    exceptions = split.exceptions
    if start is None:  # the zeroed padding row differs from embedding[0] @ kernel + bias
        assert exceptions >= UNITS * 4 - 1


def test_exceptions_are_found_where_the_factors_disagree() -> None:
    """An entry of the table the factors do not make (one bit off) becomes an exception."""
    embedding = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    kernel = np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2)
    bias = np.array([0.25, -0.5], dtype=np.float32)
    exact = recompute_table(embedding, kernel, bias)
    nudged = exact.copy()
    nudged.view(np.uint32)[1, 1] ^= 1
    indices, values = table_exceptions(nudged, exact)
    assert indices.tolist() == [3] and values.view(np.uint32).tolist() == [
        nudged.view(np.uint32)[1, 1]
    ]


def test_the_site_step_gives_the_original_steps_outputs(tiny_word_gates_folder: Path) -> None:
    table, split = _split(tiny_word_gates_folder)
    original = ort.InferenceSession(
        str(tiny_word_gates_folder / "decoder_step.onnx"), providers=["CPUExecutionProvider"]
    )
    site = ort.InferenceSession(split.step, providers=["CPUExecutionProvider"])
    assert [i.name for i in site.get_inputs()] == ["x_gates", "h", "c", "photo"]
    rng = np.random.default_rng(7)
    words = rng.integers(0, table.shape[0], 9)
    state = {
        "h": rng.normal(0, 1, (9, UNITS)).astype(np.float32),
        "c": rng.normal(0, 1, (9, UNITS)).astype(np.float32),
        "photo": rng.normal(0, 1, (9, UNITS)).astype(np.float32),
    }
    want = original.run(None, {"word": words.astype(np.int64), **state})
    got = site.run(None, {"x_gates": table[words], **state})
    for expected, actual in zip(want, got, strict=True):
        assert np.array_equal(expected, actual)
    # Everything but the Gather, the table and the `word` input is the original graph's.
    before = onnx.load(str(tiny_word_gates_folder / "decoder_step.onnx"))
    after = onnx.load_model_from_string(split.step)
    assert [n for n in before.graph.node if n.op_type != "Gather"] == list(after.graph.node)
    kept = [t for t in before.graph.initializer if t.name != "word_gate_table"]
    assert kept == list(after.graph.initializer)
    assert before.metadata_props == after.metadata_props
    assert before.graph.output == after.graph.output


def test_the_site_ships_the_split_step_described_in_its_manifest(
    tiny_word_gates_folder: Path, fake_ort: Path, tmp_path: Path
) -> None:
    site = export_web(
        tmp_path / "site", model=tiny_word_gates_folder, ort_dir=fake_ort, word_gates=True
    )
    names = json.loads((site.folder / "capgen-site.json").read_text())["model"]["files"]
    assert names[1:4] == ["photo_projection.onnx", SITE_STEP_FILE, WORD_GATES_DATA_FILE]
    assert not (site.folder / "decoder_step.onnx").exists()
    manifest = load_manifest(site.folder)  # still a capgen manifest, with a `web` section
    web = manifest.extra["web"]
    assert web["step_file"] == SITE_STEP_FILE
    assert web["word_gates"]["file"] == WORD_GATES_DATA_FILE
    for name in (SITE_STEP_FILE, WORD_GATES_DATA_FILE):
        record = manifest.files[name]
        assert record.bytes == (site.folder / name).stat().st_size
    assert (
        manifest.files[SITE_STEP_FILE].onnxruntime
        == manifest.files["decoder_step.onnx"].onnxruntime
    )


@pytest.mark.parametrize("gates", [False, True], ids=["no-word-gates", "factors-larger"])
def test_the_step_ships_as_it_is_without_word_gates_or_when_they_are_larger(
    tiny_model_folder: Path,
    tiny_word_gates_folder: Path,
    fake_ort: Path,
    tmp_path: Path,
    gates: bool,
) -> None:
    """The tiny model's factors (13 x 16 + 16 x 64 floats) outweigh its table (13 x 64), as the shapes model's."""
    model = tiny_word_gates_folder if gates else tiny_model_folder
    site = export_web(tmp_path / "site", model=model, ort_dir=fake_ort)
    for name in ("decoder_step.onnx", "manifest.json"):
        assert (site.folder / name).read_bytes() == (model / name).read_bytes()
    assert not (site.folder / WORD_GATES_DATA_FILE).exists()


def _js_rows(site: Path, ids: list[int]) -> dict[int, np.ndarray]:
    done = subprocess.run(
        [node(), str(REPO / "tests" / "web" / "word_gate_rows.mjs"), str(site), json.dumps(ids)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return {
        int(key): np.frombuffer(base64.b64decode(value), "<f4")
        for key, value in json.loads(done.stdout).items()
    }


def _check_js_rows(model: Path, site: Path, ids: list[int]) -> None:
    table = _table(model)
    rows = _js_rows(site, ids)
    assert sorted(rows) == sorted(ids)
    for word, row in rows.items():
        assert np.array_equal(row.view(np.uint32), table[word].view(np.uint32)), word


def test_the_js_rows_are_the_tables_rows_on_the_tiny_model(tmp_path: Path, fake_ort: Path) -> None:
    node()
    model = _converted(tmp_path, None)  # row 0 zeroed: the whole row comes from exceptions
    site = export_web(tmp_path / "site", model=model, ort_dir=fake_ort, word_gates=True).folder
    _check_js_rows(model, site, list(range(len(WORDS))))


@pytest.fixture(scope="module")
def default_int8_site(web_sites: SiteCache) -> tuple[Path, Path, int]:
    """The default model's INT8 site, as test_web_parity.py's (one export a session)."""
    model = built_model("default")
    if load_manifest(model).decoder.word_gates_file is None:
        pytest.skip(f"{model} was built by an older converter recipe (run capgen setup)")
    site = web_sites(model, True)
    return model, site.folder, site.model_bytes


@SHARES_NODE
def test_the_js_rows_are_the_tables_rows_on_the_default_model(
    default_int8_site: tuple[Path, Path, int],
) -> None:
    node()
    model, site, _ = default_int8_site
    size = load_manifest(model).vocabulary.size
    _check_js_rows(model, site, [0, 1, 2, 3, 17, 500, size // 2, size - 2, size - 1])


@SHARES_NODE
def test_the_default_int8_site_fits_the_issues_45_mb(
    default_int8_site: tuple[Path, Path, int],
) -> None:
    _, site, model_bytes = default_int8_site
    assert model_bytes <= SITE_LIMIT_BYTES, f"{model_bytes:,} bytes of model files"
    assert not (site / "decoder_step.onnx").exists()


def test_without_onnx_the_split_says_which_extra_to_install(
    tiny_word_gates_folder: Path, fake_ort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capgen.convert import stack
    from capgen.runtime.errors import ConversionError

    monkeypatch.setattr(stack, "missing_modules", lambda modules: list(modules))
    with pytest.raises(ConversionError, match=r"needs onnx .*capgen\[convert-decoder\]"):
        export_web(
            tmp_path / "site", model=tiny_word_gates_folder, ort_dir=fake_ort, word_gates=True
        )
    assert not (tmp_path / "site").exists()
