"""Issue 25: `--precision fp32|bf16|int8|auto` and `Captioner(precision=...)`.

fp32 stays the exact default; bf16 runs the FP32 graph on OpenVINO (skipped
with a reason where OpenVINO or a bf16 CPU is missing); int8 runs the INT8
graph on the fastest installed engine; auto uses only a decision that
`capgen tune` stored for this very model and machine. No timing is asserted:
the tests check what runs, what is shown, and that numbers stay close.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import TinyModel, write_tiny_model

from capgen.runtime.captioner import Captioner
from capgen.runtime.encoder import Encoder
from capgen.runtime.engines import (
    OPENVINO,
    OPENVINO_INSTALL,
    bf16_supported,
    openvino_installed,
    read_verified,
)
from capgen.runtime.errors import InputError, ModelIntegrityError
from capgen.runtime.manifest import EncoderSpec, load_manifest
from capgen.runtime.precision import (
    DECISIONS_FOLDER,
    decision_bytes,
    decision_key,
    decision_name,
    load_decision,
    plan_encoder,
    store_decision,
)
from capgen.runtime.preprocess import DEFAULT_MAX_PIXELS, prepare, resample_filter

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
REAL_ENCODER = Path.home() / ".cache" / "capgen" / "encoders" / "xception.onnx"
needs_openvino = pytest.mark.skipif(
    not openvino_installed(), reason=f"OpenVINO is not installed ({OPENVINO_INSTALL})"
)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own: decisions must not leak between tests."""
    folder = tmp_path / "home"
    monkeypatch.setenv("CAPGEN_HOME", str(folder))
    return folder


@pytest.fixture()
def bench_images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(25)
    paths = []
    for index in range(12):
        path = tmp_path / f"bench{index:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _greedy(captioner: Captioner, images: list[Path]) -> list[tuple[int, ...]]:
    results = captioner.caption_batch(images, beam_size=1)
    return [result.tokens for result in results]  # type: ignore[union-attr]


def _run_capgen(*args: str, home: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter; `prelude` runs first (e.g. to block an import)."""
    code = f"{prelude}\nimport sys\nsys.argv = ['capgen', *{list(args)!r}]\nfrom capgen.cli import main\nmain()"
    return subprocess.run(
        [str(PYTHON), "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CAPGEN_HOME": str(home)},
    )


# ---- fp32: the default, unchanged -----------------------------------------


def test_fp32_is_the_default_and_runs_on_onnxruntime(tiny_model: TinyModel, home: Path) -> None:
    default = Captioner(tiny_model.folder)
    assert (default.encoder_plan.requested, default.encoder_plan.mode) == ("fp32", "fp32")
    assert default.encoder_plan.engine == "onnxruntime"
    assert default.model_files[0] == "encoder.onnx"
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    explicit = Captioner(tiny_model.folder, precision="fp32")
    assert np.array_equal(default.features(pixels), explicit.features(pixels))


def test_int8_flag_keeps_its_meaning_and_conflicts_are_one_line(
    tiny_model: TinyModel, home: Path
) -> None:
    legacy = Captioner(tiny_model.folder, int8=True)
    assert (legacy.encoder_plan.mode, legacy.encoder_plan.engine) == ("int8", "onnxruntime")
    assert legacy.model_files[0] == "encoder.int8.onnx"
    with pytest.raises(InputError, match="disagree") as conflict:
        Captioner(tiny_model.folder, int8=True, precision="bf16")
    with pytest.raises(InputError, match="precision must be one of") as unknown:
        Captioner(tiny_model.folder, precision="fp16")
    for error in (conflict.value, unknown.value):
        assert "\n" not in str(error)


def test_int8_runs_on_onnxruntime_even_with_openvino_installed(
    tiny_model: TinyModel, home: Path, bench_images: list[Path]
) -> None:
    """OpenVINO's INT8 numbers are not always faithful (precision.py): only tune may pick it."""
    captioner = Captioner(tiny_model.folder, precision="int8")
    plan = captioner.encoder_plan
    assert (plan.mode, plan.engine, plan.file) == ("int8", "onnxruntime", "encoder.int8.onnx")
    # The tiny model's INT8 file is a byte copy of the FP32 graph: the same captions.
    assert _greedy(captioner, bench_images) == _greedy(Captioner(tiny_model.folder), bench_images)


@needs_openvino
def test_int8_on_openvino_runs_when_a_decision_vouches_for_it(
    tiny_model: TinyModel, home: Path, bench_images: list[Path]
) -> None:
    body = _decision_body("int8", "openvino")
    body["candidates"]["int8/openvino"] = {  # type: ignore[index]
        "ms_per_image": 20.0, "agreement": 1.0, "equal_captions": 12,
    }  # fmt: skip
    store_decision(load_manifest(tiny_model.folder), body)
    captioner = Captioner(tiny_model.folder, precision="auto")
    plan = captioner.encoder_plan
    assert (plan.requested, plan.mode, plan.engine) == ("auto", "int8", "openvino")
    assert _greedy(captioner, bench_images) == _greedy(Captioner(tiny_model.folder), bench_images)


def test_int8_without_an_int8_graph_is_the_old_one_line_error(tmp_path: Path, home: Path) -> None:
    plain = write_tiny_model(tmp_path / "plain")
    with pytest.raises(Exception, match="no INT8 encoder") as missing:
        Captioner(plain.folder, precision="int8")
    assert "\n" not in str(missing.value)


# ---- OpenVINO ---------------------------------------------------------------


@needs_openvino
def test_openvino_reads_only_verified_bytes(tiny_model: TinyModel, tmp_path: Path) -> None:
    manifest = load_manifest(tiny_model.folder)
    record = manifest.files["encoder.onnx"]
    assert len(read_verified(manifest.path("encoder.onnx"), record.sha256)) == record.bytes
    with pytest.raises(ModelIntegrityError, match="does not match"):
        read_verified(manifest.path("encoder.onnx"), "0" * 64)
    with pytest.raises(ModelIntegrityError, match="does not match"):
        Encoder(manifest.path("encoder.onnx"), manifest.encoder, sha256="0" * 64, engine=OPENVINO)


@needs_openvino
def test_openvino_f32_matches_onnxruntime_on_the_tiny_encoder(tiny_model: TinyModel) -> None:
    manifest = load_manifest(tiny_model.folder)
    path, sha256 = manifest.path("encoder.onnx"), manifest.files["encoder.onnx"].sha256
    pixels = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    reference = Encoder(path, manifest.encoder).encode(pixels)
    features = Encoder(path, manifest.encoder, sha256=sha256, engine=OPENVINO).encode(pixels)
    np.testing.assert_allclose(features, reference, atol=1e-5)


@pytest.fixture(scope="module")
def real_encoder() -> tuple[Path, str]:
    if not REAL_ENCODER.is_file():
        pytest.skip(f"the real Xception encoder is not at {REAL_ENCODER} (capgen setup builds it)")
    with REAL_ENCODER.open("rb") as handle:
        return REAL_ENCODER, hashlib.file_digest(handle, "sha256").hexdigest()


@pytest.mark.slow
def test_bf16_features_stay_within_cosine_0_999_on_real_photos(
    real_encoder: tuple[Path, str], flickr_photos: list[Path]
) -> None:
    if not openvino_installed():
        pytest.skip(f"OpenVINO is not installed ({OPENVINO_INSTALL})")
    if not bf16_supported():
        pytest.skip("this CPU has no bf16 (AMX or AVX512-BF16) for OpenVINO")
    path, sha256 = real_encoder
    spec = EncoderSpec("xception.onnx", None, "xception", 2048, 299, 299, "BICUBIC")
    bicubic = resample_filter("BICUBIC")
    pixels = np.stack(
        [prepare(photo, 299, 299, bicubic, DEFAULT_MAX_PIXELS) for photo in flickr_photos[:12]]
    )
    # sha256 None: no optimised-graph cache for the 83 MB encoder in the test's home.
    fp32 = Encoder(path, spec, threads=2)
    exact = np.concatenate([fp32.encode(pixels[i : i + 4]) for i in (0, 4, 8)])
    del fp32
    bf16 = Encoder(
        path, spec, threads=2, sha256=sha256, engine=OPENVINO, inference_precision="bf16"
    )
    assert bf16._session.inference_precision == "bf16"  # what OpenVINO really computes in
    fast = np.concatenate([bf16.encode(pixels[i : i + 4]) for i in (0, 4, 8)])
    cosine = (fast * exact).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(exact, axis=1)
    assert len(cosine) == 12 and cosine.min() >= 0.999, cosine


@pytest.mark.skipif(not bf16_supported(), reason="needs OpenVINO and a bf16 CPU")
def test_bf16_plan_on_the_tiny_model(tiny_model: TinyModel, home: Path) -> None:
    captioner = Captioner(tiny_model.folder, precision="bf16")
    plan = captioner.encoder_plan
    assert (plan.mode, plan.engine, plan.inference_precision, plan.file) == (
        "bf16", "openvino", "bf16", "encoder.onnx",
    )  # fmt: skip


def test_missing_openvino_is_one_line_naming_the_extra(tiny_model: TinyModel, home: Path) -> None:
    block = "import sys\nsys.modules['openvino'] = None  # as if not installed"
    image = tiny_model.folder.parent / "blocked.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    done = _run_capgen(
        "caption", "--model", str(tiny_model.folder), "--precision", "bf16", str(image),
        home=home, prelude=block,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and OPENVINO_INSTALL in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # int8 falls back to onnxruntime, and says so with -v.
    fallback = _run_capgen(
        "caption", "-v", "--model", str(tiny_model.folder), "--precision", "int8", str(image),
        home=home, prelude=block,
    )  # fmt: skip
    assert fallback.returncode == 0, fallback.stderr
    assert "precision int8: encoder.int8.onnx on onnxruntime" in fallback.stderr


# ---- auto: a stored decision, used only when it is exactly ours -------------


def _decision_body(mode: str, engine: str) -> dict[str, object]:
    return {
        "mode": mode,
        "engine": engine,
        "threshold": 0.97,
        "images": 12,
        "threads": None,
        "created": "2026-12-01T00:00:00Z",
        "candidates": {
            "fp32/onnxruntime": {"ms_per_image": 70.0, "agreement": 1.0, "equal_captions": 12},
            "int8/onnxruntime": {"ms_per_image": 30.0, "agreement": 1.0, "equal_captions": 12},
            "bf16/openvino": {"error": "not measured in this test"},
        },
    }


def _decision_file(folder: Path) -> Path:
    manifest = load_manifest(folder)
    return (
        Path(os.environ["CAPGEN_HOME"]) / DECISIONS_FOLDER / decision_name(decision_key(manifest))
    )


def test_auto_without_a_decision_is_fp32_and_says_why(tiny_model: TinyModel, home: Path) -> None:
    plan = Captioner(tiny_model.folder, precision="auto").encoder_plan
    assert (plan.requested, plan.mode, plan.engine) == ("auto", "fp32", "onnxruntime")
    assert "no stored decision" in plan.note and "capgen tune" in plan.note


def test_auto_uses_the_stored_decision(tiny_model: TinyModel, home: Path) -> None:
    stored = store_decision(load_manifest(tiny_model.folder), _decision_body("int8", "onnxruntime"))
    assert Path(stored) == _decision_file(tiny_model.folder)
    assert Path(stored).is_relative_to(home)
    captioner = Captioner(tiny_model.folder, precision="auto")
    plan = captioner.encoder_plan
    assert (plan.requested, plan.mode, plan.engine, plan.file) == (
        "auto", "int8", "onnxruntime", "encoder.int8.onnx",
    )  # fmt: skip
    assert captioner.model_files[0] == "encoder.int8.onnx"
    assert "tuned 2026-12-01" in plan.note and "precision auto → int8" in plan.describe()
    assert plan_encoder(load_manifest(tiny_model.folder), "fp32").mode == "fp32"  # asked: asked


def test_a_tampered_decision_is_ignored(tiny_model: TinyModel, home: Path) -> None:
    store_decision(load_manifest(tiny_model.folder), _decision_body("int8", "onnxruntime"))
    path = _decision_file(tiny_model.folder)
    data = json.loads(path.read_text())
    data["candidates"]["fp32/onnxruntime"]["ms_per_image"] = 1.0  # "make fp32 win"
    path.write_text(json.dumps(data))
    plan = Captioner(tiny_model.folder, precision="auto").encoder_plan
    assert plan.mode == "fp32" and "seal" in plan.note
    path.write_bytes(b"\x00not json")
    assert Captioner(tiny_model.folder, precision="auto").encoder_plan.mode == "fp32"


def test_a_foreign_or_inconsistent_decision_is_ignored(tiny_model: TinyModel, home: Path) -> None:
    manifest = load_manifest(tiny_model.folder)
    store_decision(manifest, _decision_body("int8", "onnxruntime"))
    path = _decision_file(tiny_model.folder)
    # Sealed properly, but made for another model's encoder (copied from elsewhere).
    foreign = decision_key(manifest)
    foreign["files"] = {**foreign["files"], "encoder.onnx": "f" * 64}
    path.write_bytes(decision_bytes(foreign, _decision_body("int8", "onnxruntime")))
    decision, reason = load_decision(manifest)
    assert decision is None and "other files" in reason
    # Sealed, ours, but the mode is not the fastest that agreed: not what tune writes.
    slow = _decision_body("fp32", "onnxruntime")
    path.write_bytes(decision_bytes(decision_key(manifest), slow))
    decision, reason = load_decision(manifest)
    assert decision is None and "not the fastest" in reason
    # A link in place of the file is never followed.
    target = path.with_name("elsewhere.json")
    target.write_bytes(
        decision_bytes(decision_key(manifest), _decision_body("int8", "onnxruntime"))
    )
    path.unlink()
    path.symlink_to(target)
    decision, reason = load_decision(manifest)
    assert decision is None and "ignored" in reason
    assert Captioner(tiny_model.folder, precision="auto").encoder_plan.mode == "fp32"


def test_tune_stores_what_auto_then_runs(
    tiny_model: TinyModel, home: Path, bench_images: list[Path]
) -> None:
    from capgen.runtime.tuning import MIN_BENCH_IMAGES, tune

    with pytest.raises(InputError, match=f"at least {MIN_BENCH_IMAGES}"):
        tune(tiny_model.folder, bench_images[:3])
    lines: list[str] = []
    result = tune(tiny_model.folder, bench_images, threads=1, progress=lines.append)
    assert Path(result.stored).is_relative_to(home)
    chosen = result.candidates[f"{result.mode}/{result.engine}"]
    assert chosen["agreement"] >= 0.97
    assert result.candidates["fp32/onnxruntime"]["agreement"] == 1.0
    assert any(line.startswith("fp32/onnxruntime:") for line in lines)
    plan = Captioner(tiny_model.folder, precision="auto").encoder_plan
    assert (plan.mode, plan.engine) == (result.mode, result.engine)


# ---- where the mode is shown --------------------------------------------------


def test_capgen_info_and_verbose_caption_show_the_mode(tiny_model: TinyModel, home: Path) -> None:
    info = _run_capgen("info", str(tiny_model.folder), home=home)
    assert info.returncode == 0, info.stderr
    assert "precision:    fp32: encoder.onnx on onnxruntime" in info.stdout
    assert "precision:    auto: fp32 on onnxruntime (no stored decision" in info.stdout
    store_decision(load_manifest(tiny_model.folder), _decision_body("int8", "onnxruntime"))
    info = _run_capgen("info", str(tiny_model.folder), home=home)
    assert "precision:    auto: int8 on onnxruntime (tuned 2026-12-01" in info.stdout
    image = tiny_model.folder.parent / "shown.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    caption = _run_capgen(
        "caption", "-v", "--precision", "auto", "--model", str(tiny_model.folder), str(image),
        home=home,
    )  # fmt: skip
    assert caption.returncode == 0, caption.stderr
    assert "precision auto → int8: encoder.int8.onnx on onnxruntime" in caption.stderr


def test_v1_model_shows_the_mode(tiny_model: TinyModel, home: Path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")
    from capgen.serve.app import create_app
    from capgen.serve.settings import ServeSettings

    app = create_app(lambda: Captioner(tiny_model.folder, int8=True), ServeSettings())

    async def scenario() -> dict[str, object]:
        service = app.state.service
        await service.load()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                return (await client.get("/v1/model")).json()
        finally:
            service.batcher._executor.shutdown(wait=True)

    summary = asyncio.run(scenario())
    precision = summary["precision"]
    assert isinstance(precision, dict)
    assert precision["mode"] == "int8" and precision["engine"] == "onnxruntime"
    assert precision["encoder_file"] == "encoder.int8.onnx" and precision["engine_version"]
