"""Long steps say what they do: `capgen setup`, `capgen convert quantize`, `capgen ray caption`.

Setup and quantizing are a minute or more with the quantizer's own output
silenced, and a successful `capgen ray caption` used to print nothing at all.
The library only calls a `progress` callback; the CLI's (`terminal_progress`)
writes to stderr, and only when stderr is a terminal. Heavy steps (TensorFlow
export, Ray) are replaced here; quantizing the tiny model is real (seconds).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_model import TinyModel

from capgen.cli_support.console import terminal_progress
from capgen.models import setup_default
from capgen.models.setup_default import PHOTO_MODEL, setup_model


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress_writes_only_to_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    progress = terminal_progress("setup")
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    progress("converting")
    assert piped.getvalue() == ""  # a log or CI run gets no progress lines
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    progress("converting\x1b[2J")
    assert terminal.getvalue() == "capgen setup: converting\\x1b[2J\n"


def test_setup_command_progress_writes_only_to_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    setup_default._terminal_progress("default: converting")
    assert piped.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    setup_default._terminal_progress("default: converting a\nb")
    assert terminal.getvalue() == "capgen setup: default: converting a\\x0ab\n"


def _fake_heavy_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, current: bool) -> list[str]:
    """Replace every slow step of setup_model; returns the log of which ran, in order."""
    ran: list[str] = []
    encoder = tmp_path / "encoder.onnx"
    encoder.write_bytes(b"onnx")

    def step(name: str, result: Any = None) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            ran.append(name)
            return result

        return run

    def quantize(folder: Path, echo: Any, progress: Any) -> None:
        ran.append("quantize")
        progress("calibrating")  # quantize_model_folder's own stages reach setup's callback

    report = SimpleNamespace(
        architecture=SimpleNamespace(vocab_size=12, feature_size=48), max_length=8
    )
    monkeypatch.setattr("capgen.convert.weights.fetch_imagenet_weights", step("weights", tmp_path))
    monkeypatch.setattr("capgen.convert.encoder.ensure_encoder", step("encoder", encoder))
    monkeypatch.setattr("capgen.convert.convert_model.convert_model", step("convert", report))
    monkeypatch.setattr("capgen.convert.quantize.quantize_model_folder", quantize)
    monkeypatch.setattr("capgen.convert.fast_decoder.add_fast_decoder", step("fast"))
    monkeypatch.setattr("capgen.runtime.manifest.load_manifest", step("load"))
    monkeypatch.setattr("capgen.runtime.integrity.verify_files", step("verify"))
    monkeypatch.setattr(setup_default, "_is_current", lambda *args: current)
    monkeypatch.setattr(setup_default, "_warm_runtime_caches", step("warm"))
    return ran


def _sources(tmp_path: Path) -> Path:
    sources = tmp_path / "photo"
    sources.mkdir()
    (sources / "model_9.h5").write_bytes(b"h5")
    (sources / "tokenizer.p").write_bytes(b"pickle")
    return sources


def test_setup_sends_a_stage_message_before_each_long_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    ran = _fake_heavy_steps(monkeypatch, tmp_path, current=False)
    log: list[tuple[str, str]] = []

    target = setup_model(
        PHOTO_MODEL,
        echo=lambda line: log.append(("echo", line)),
        sources=_sources(tmp_path),
        progress=lambda line: log.append(("progress", line)),
    )

    assert ran == ["weights", "encoder", "convert", "quantize", "fast", "load", "verify", "warm"]
    stages = [line for kind, line in log if kind == "progress"]
    assert all(line.startswith("default: ") for line in stages), stages
    for expected in (
        "ImageNet Xception weights",
        "xception encoder ONNX",
        "converting model_9.h5 and tokenizer.p",
        "INT8 encoder",
        "default: calibrating",  # from inside quantize_model_folder, prefixed
        "fast decoder step",
        "verifying",
    ):
        assert any(expected in line for line in stages), (expected, stages)
    # Each message comes before its step: the first is sent before any step ran, and
    # the INT8 message comes before quantize's own stage message.
    index = [line for _, line in log].index
    assert index(stages[0]) == 0
    int8 = next(line for line in stages if "INT8 encoder" in line)
    assert index(int8) < index("default: calibrating")
    # The last line is the summary: what was built, where, in how long.
    kind, summary = log[-1]
    assert kind == "echo" and summary.startswith(f"default model ready: {target} (")
    assert summary.endswith(" s)")
    assert capsys.readouterr() == ("", "")  # the library itself printed nothing


def test_setup_up_to_date_still_says_what_it_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAPGEN_HOME", str(tmp_path / "home"))
    ran = _fake_heavy_steps(monkeypatch, tmp_path, current=True)
    stages: list[str] = []
    echoed: list[str] = []
    setup_model(PHOTO_MODEL, echo=echoed.append, sources=_sources(tmp_path), progress=stages.append)
    assert "convert" not in ran and "quantize" not in ran
    assert [stage.split(":")[1].split()[0] for stage in stages] == [
        "ImageNet",
        "xception",
        "checking",
    ]
    assert echoed[-1].startswith("default model up to date: ") and echoed[-1].endswith(" s)")


def test_quantize_sends_its_stages_to_progress(tiny_model: TinyModel, tmp_path: Path) -> None:
    from capgen.convert.quantize import quantize_model_folder

    folder = tmp_path / "model"
    shutil.copytree(tiny_model.folder, folder)
    images = [
        np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        for seed in range(3)
    ]
    log: list[tuple[str, str]] = []
    quantize_model_folder(
        folder,
        images=images,
        echo=lambda line: log.append(("echo", line)),
        progress=lambda line: log.append(("progress", line)),
    )
    stages = [line for kind, line in log if kind == "progress"]
    assert len(stages) == 2 and "preparing" in stages[0] and "calibrating" in stages[1]
    # The slow calibration is announced before it starts, the result only after it.
    assert log[-1][0] == "echo" and log[-1][1].startswith("wrote ")


def test_ray_summary_line() -> None:
    from capgen.ray.cli import summary_line

    line = summary_line(198, 2, 0, Path("out/captions.jsonl"), 61.26)
    assert line == "capgen: 198 images captioned, 2 failed; written to out/captions.jsonl in 61.3 s"
    line = summary_line(1, 0, 5, Path("out.parquet"), 0.04)
    assert line == (
        "capgen: 1 image captioned, 0 failed, 5 skipped (already in the output); "
        "written to out.parquet in 0.0 s"
    )
    assert summary_line(0, 0, 0, Path("a\nb.jsonl"), 1).count("\n") == 0


def test_ray_caption_ends_with_the_summary(
    tiny_captioner: Any, tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command itself, with Ray replaced by the tiny captioner: the summary is printed."""
    import contextlib

    import typer
    from typer.testing import CliRunner

    from capgen.ray import cli as ray_cli
    from capgen.ray.rows import row_from_outcome

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        Image.new("RGB", (40, 32), (60 * index, 90, 30)).save(photos / f"{index}.png")
    (photos / "broken.png").write_bytes(b"not a png")

    def fake_run(todo: list[str], sink: Any, *args: Any) -> tuple[int, int]:
        captioned = failed = 0
        for path, outcome in tiny_captioner.iter_captions(todo, beam_size=1):
            row = row_from_outcome(path, outcome)
            failed += row["error"] is not None
            captioned += row["error"] is None
            sink.write(row)
        return captioned, failed

    monkeypatch.setattr("capgen.ray.connect.require_ray_extra", lambda: None)
    monkeypatch.setattr("capgen.ray.connect.connect", lambda address: None)
    monkeypatch.setattr("capgen.ray.connect.ray_logs_silenced", contextlib.nullcontext)
    monkeypatch.setattr(ray_cli, "_run", fake_run)
    out = tmp_path / "captions.jsonl"
    arguments = ["ray", "caption", str(photos), "-o", str(out), "-m", str(tiny_model.folder)]
    app = typer.Typer()  # as capgen/cli.py assembles it
    app.callback()(lambda: None)
    ray_cli.register_ray_command(app)

    first = CliRunner().invoke(app, arguments)
    assert first.exit_code == 1, first.output  # one image failed
    assert first.stdout == "", first.stderr
    summary = first.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"capgen: 3 images captioned, 1 failed; written to {out} in ")
    assert len(out.read_text().splitlines()) == 4

    again = CliRunner().invoke(app, [*arguments, "--resume"])
    assert again.exit_code == 1, again.output
    summary = again.stderr.strip().splitlines()[-1]
    assert summary.startswith(
        "capgen: 0 images captioned, 1 failed, 3 skipped (already in the output); written to "
    ), again.stderr
