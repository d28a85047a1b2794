"""Issue 11 item 7: execution providers by onnxruntime's own names, CPU by default.

A name this onnxruntime build does not have is one line naming the ones it
has (onnxruntime itself only warns and silently runs on the CPU); the chosen
providers reach every session of the model.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from cli_helpers import Run, assert_one_line_error, write_photos
from tiny_model import TinyModel

from capgen import Captioner
from capgen.runtime.errors import InputError


def _sessions(captioner: Captioner) -> list[ort.InferenceSession]:
    step_model = captioner._step_model
    return [
        captioner._encoder._session._session,
        step_model._projection._session,
        step_model._step._session,
    ]


def test_unknown_provider_is_one_line_naming_the_available_ones(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    photo = write_photos(tmp_path / "photos", 1, seed=5)[0]
    output = tmp_path / "captions.jsonl"
    done = run(
        "caption", "-m", hardening_model.folder, "--provider", "CUDAExecutionProvider", photo,
        "--output", output,
    )  # fmt: skip
    line = assert_one_line_error(done, 2, "'CUDAExecutionProvider' is not available")
    for name in ort.get_available_providers():
        assert name in line
    assert not output.exists()  # refused before anything was written


def test_cpu_provider_by_name_captions_as_the_default(
    run: Run, hardening_model: TinyModel, tmp_path: Path
) -> None:
    photos = write_photos(tmp_path / "photos", 3, seed=6)
    default = run("caption", "-m", hardening_model.folder, *photos)
    named = run(
        "caption", "-m", hardening_model.folder, "--provider", "CPUExecutionProvider", *photos
    )
    assert default.returncode == named.returncode == 0, named.stderr
    assert named.stdout == default.stdout and named.stderr == b""


@pytest.mark.parametrize(
    "providers", ["NoSuchExecutionProvider", [], [1], ["CPUExecutionProvider"] * 2]
)
def test_api_refuses_bad_provider_lists(hardening_model: TinyModel, providers: object) -> None:
    with pytest.raises(InputError, match="provider"):
        Captioner(hardening_model.folder, providers=providers)  # type: ignore[arg-type]


def test_every_session_gets_the_providers(hardening_model: TinyModel) -> None:
    default = Captioner(hardening_model.folder)
    named = Captioner(hardening_model.folder, providers="CPUExecutionProvider")
    for captioner in (default, named):
        assert captioner.providers == ("CPUExecutionProvider",)
        assert all(s.get_providers() == ["CPUExecutionProvider"] for s in _sessions(captioner))


@pytest.mark.parametrize(
    ("provider", "build"),
    [
        ("CUDAExecutionProvider", "onnxruntime-gpu"),
        ("DmlExecutionProvider", "onnxruntime-directml"),
        ("CoreMLExecutionProvider", "macOS onnxruntime wheel"),
    ],
)
def test_a_missing_accelerator_names_the_build_that_has_it(
    run: Run, hardening_model: TinyModel, tmp_path: Path, provider: str, build: str
) -> None:
    """Issue 26 item 11: not just "not available", but which onnxruntime build brings it."""
    if provider in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has {provider}")
    photo = write_photos(tmp_path / "photos", 1, seed=6)[0]
    done = run("caption", "-m", hardening_model.folder, "--provider", provider, photo)
    assert_one_line_error(done, 2, provider, build, "docs/cli.md")
