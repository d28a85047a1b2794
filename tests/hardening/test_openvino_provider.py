"""Issue 11 item 7, for real: OpenVINO's provider captions like the CPU provider.

Builds (once per session, one to two minutes) a venv by the README's recipe
for provider builds: `onnxruntime-openvino` with capgen's other runtime
dependencies, then capgen with `--no-deps` (capgen.benchmarks.provider_venv;
tests/runtime/runtime_venvs.py). There, on the 12 Flickr8k photos,
`capgen caption --provider OpenVINOExecutionProvider -b 1` gives the CPU
provider's captions, and the Xception features under OpenVINO are within
1e-4 of the CPU provider's of that same onnxruntime, for two encoders: the
plain ImageNet Xception (a small decoder converted onto capgen's cached
export) and the shapes model's `xception+colour`, which OpenVINO refused
until capgen wrote tf2onnx's no-op Unsqueeze nodes as Identity
(convert/portable.py). The colour features appended to Xception's differ
more (up to about 5e-3 on values up to about 10, measured): they divide by
gradient magnitudes near zero and sum soft masks, which magnifies the last-bit
differences of OpenVINO's convolutions; they are held to COLOUR_TOLERANCE,
and the shapes model's own scenes (examples/shapes/) must caption identically too.
Skips only when the package index cannot be reached, or when `capgen setup`
has not built what it reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from runtime_venvs import build_openvino_venv

_REAL_HOME = Path(os.environ.get("CAPGEN_HOME") or Path.home() / ".cache" / "capgen")
XCEPTION_ONNX = _REAL_HOME / "encoders" / "xception.onnx"
SHAPES_MODEL = _REAL_HOME / "models" / "shapes"  # the built-in model with the colour encoder
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shapes"
OPENVINO = "OpenVINOExecutionProvider"
COLOUR_TOLERANCE = 2e-2

# argv: the model folder, then a JSON list of photo groups; one JSON line of results per group.
# Both Captioners are built once for every group (each build compiles the graphs on OpenVINO).
# The CPU side runs caption_batch's own steps (Captioner.iter_captions: DEFAULT_BATCH_SIZE
# photos stacked, encoded, decoded), so its captions are `caption_batch`'s bit for bit and its
# features are the CPU side of the comparison too: each photo is encoded once on the CPU, not
# a second time by caption_batch. OpenVINO encodes each group stacked, as before.
FEATURES = textwrap.dedent("""
    import json, sys
    import numpy as np
    from capgen import Captioner
    from capgen.runtime.captioner import DEFAULT_BATCH_SIZE
    from capgen.runtime.decoding import DecodingOptions
    folder, groups = sys.argv[1], json.loads(sys.argv[2])
    cpu = Captioner(folder)
    openvino = Captioner(folder, providers=["OpenVINOExecutionProvider"])
    greedy = DecodingOptions(beam_size=1)
    for photos in groups:
        pixels = [cpu.preprocess(p) for p in photos]
        cpu_features, captions = [], []
        for start in range(0, len(pixels), DEFAULT_BATCH_SIZE):
            features = cpu.features(np.stack(pixels[start : start + DEFAULT_BATCH_SIZE]))
            cpu_features.append(features)
            captions += [result.text for result in cpu.decode_features(features, greedy)]
        difference = np.abs(np.concatenate(cpu_features) - openvino.features(np.stack(pixels)))
        print(json.dumps({
            "providers": openvino._encoder._session._session.get_providers(),
            "xception": float(difference[:, :2048].max()),
            "all": float(difference.max()),
            "cpu_captions": captions,
        }))
""")


@pytest.fixture(scope="session")
def openvino_python(tmp_path_factory: pytest.TempPathFactory, capgen_wheel: Path) -> Path:
    return build_openvino_venv(tmp_path_factory.mktemp("openvino"), capgen_wheel)


@pytest.fixture(scope="module")
def plain_xception_model(tmp_path_factory: pytest.TempPathFactory, tf_keras_stack: None) -> Path:
    """The plain-Xception model folder (read only), converted once for the module's two tests
    that use it: each conversion builds a Keras decoder and runs tf2onnx (seconds of CPU).
    model_9.h5 and tokenizer.p are beside it (the bench's BenchModel names model_9.h5)."""
    if not XCEPTION_ONNX.is_file():
        pytest.skip(f"no exported plain Xception at {XCEPTION_ONNX} (capgen setup makes it)")
    from keras_decoder_builders import fit_small_tokenizer, save_small_tutorial_decoder

    from capgen.convert.convert_model import convert_model

    folder = tmp_path_factory.mktemp("plain-xception")
    tokenizer = fit_small_tokenizer(folder / "tokenizer.p")
    save_small_tutorial_decoder(folder / "model_9.h5", tokenizer, 2048, seed=9, units=32)
    out = folder / "plain"
    convert_model(folder / "model_9.h5", folder / "tokenizer.p", out, encoder=str(XCEPTION_ONNX))
    return out


def _in_venv(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPGEN_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        list(args), capture_output=True, text=True, env=env, cwd=home, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def _captions(python: Path, home: Path, folder: Path, photos: list[Path], *extra: str) -> list[str]:
    capgen = python.with_name("capgen")
    done = _in_venv(
        home,
        str(capgen),
        "caption",
        "-m",
        str(folder),
        "-b",
        "1",
        "--json",
        *extra,
        *map(str, photos),
    )
    return [json.loads(line)["caption"] for line in done.stdout.splitlines()]


def _assert_openvino_matches_cpu(
    python: Path,
    folder: Path,
    groups: list[list[Path]],
    home: Path,
    extra_tolerance: float = 1e-4,
) -> None:
    """For each group of photos: captions identical; Xception's features within 1e-4, any
    appended ones within `extra_tolerance`. The CPU provider's captions come from the features
    script's own Captioner (caption_batch's steps, what `capgen caption -b 1` runs), the
    OpenVINO ones from the console script, once per group as before (its batches never mix
    two groups). One features process serves every group: one model load and one OpenVINO
    compile per check instead of one per group."""
    done = _in_venv(
        home,
        str(python),
        "-c",
        FEATURES,
        str(folder),
        json.dumps([list(map(str, g)) for g in groups]),
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(results) == len(groups)
    for photos, result in zip(groups, results, strict=True):
        assert result["providers"][0] == OPENVINO
        assert result["xception"] < 1e-4
        assert result["all"] < extra_tolerance
        cpu = result["cpu_captions"]
        openvino = _captions(python, home, folder, photos, "--provider", OPENVINO)
        assert len(cpu) == len(photos) and all(cpu)
        assert openvino == cpu


@pytest.mark.slow
def test_openvino_captions_like_the_cpu_provider_on_the_plain_xception_encoder(
    openvino_python: Path, plain_xception_model: Path, flickr_photos: list[Path], tmp_path: Path
) -> None:
    assert len(flickr_photos) == 12
    _assert_openvino_matches_cpu(openvino_python, plain_xception_model, [flickr_photos], tmp_path)


@pytest.mark.slow
def test_openvino_captions_like_the_cpu_provider_on_the_shapes_models_colour_encoder(
    openvino_python: Path, flickr_photos: list[Path], tmp_path: Path
) -> None:
    if not (SHAPES_MODEL / "manifest.json").is_file():
        pytest.skip(f"no shapes model in {SHAPES_MODEL} (capgen setup --model all builds it)")
    scenes = sorted(EXAMPLES.glob("*.jpg"))
    assert scenes, f"no example scenes in {EXAMPLES}"
    _assert_openvino_matches_cpu(
        openvino_python,
        SHAPES_MODEL,
        [flickr_photos, scenes],
        tmp_path,
        extra_tolerance=COLOUR_TOLERANCE,
    )


@pytest.fixture(scope="session")
def openvino_bench_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The OpenVINO venv `capgen bench` builds: capgen editable from this checkout, as
    capgen.benchmarks.provider_venv.openvino_bench_python makes it. The bench's worker is
    capgen.benchmarks', which the wheel the other venvs install leaves out (checkout only)."""
    from capgen.benchmarks.provider_venv import (
        OPENVINO_BUILD,
        ProviderVenvError,
        build_provider_venv,
        index_problem,
        uv_beside,
    )

    problem = index_problem(OPENVINO_BUILD)
    if problem is not None:
        pytest.skip(f"the package index cannot serve {OPENVINO_BUILD}: {problem}")
    venv = tmp_path_factory.mktemp("openvino-bench") / "venv"
    try:
        checkout = str(Path(__file__).resolve().parents[2])
        return build_provider_venv(venv, OPENVINO_BUILD, checkout, editable=True, uv=uv_beside())
    except ProviderVenvError as error:
        pytest.fail(f"capgen bench's onnxruntime-openvino venv: {error}")


# With the tests above (tests/conftest.py groups those by `openvino_python`): on one xdist
# worker, so the module's plain-Xception model is converted once, not once per worker.
@pytest.mark.xdist_group("openvino")
@pytest.mark.slow
def test_capgen_bench_openvino_arm_runs_its_worker_in_the_openvino_venv(
    openvino_bench_python: Path,
    plain_xception_model: Path,
    flickr_photos: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """benchmarks/run.py's OpenVINO arm: the bench's worker protocol, in the OpenVINO venv."""
    from capgen.benchmarks.fixtures import BenchModel
    from capgen.benchmarks.processes import Worker

    monkeypatch.chdir(tmp_path)  # not the checkout, whose capgen/ would shadow the venv's
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    model = BenchModel(
        name="plain",
        keras_file=plain_xception_model.parent / "model_9.h5",
        tokenizer=plain_xception_model.parent / "tokenizer.p",
        model_dir=plain_xception_model,
        colour=False,
        note="",
    )
    photo = str(flickr_photos[0])
    texts = {}
    for provider in (None, OPENVINO):
        worker = Worker(
            "capgen",
            model,
            tmp_path / "worker.log",
            provider=provider,
            python=openvino_bench_python,
        )
        try:
            assert worker.ready["ready"] is True
            assert worker.request("encode", photo=photo, batch=2)["seconds"] > 0
            texts[provider] = worker.request("latency", photo=photo, beam=1)["text"]
        finally:
            worker.close()
    assert texts[OPENVINO] == texts[None]
