"""`capgen ray caption`'s refusals, each one line and a documented exit code; no cluster needed.

The unreachable address is a port on 127.0.0.1 nobody listens at (loopback only).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from capgen_cli import assert_one_line_error

from capgen.benchmarks.static_site import free_port
from capgen.cli_support.exit_codes import ExitCode, exit_code_for

pytest.importorskip("ray", reason="needs the ray extra: pip install 'capgen[ray]'")

CAPGEN = str(Path(sys.executable).with_name("capgen"))


def _capgen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAPGEN, "ray", "caption", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _photo(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "blue").save(path)
    return path


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path: Path, model_folder: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    out = tmp_path / "out.jsonl"
    done = _capgen(str(_photo(tmp_path)), "-o", str(out), "--address", address, cwd=tmp_path)
    assert f"cannot reach a Ray cluster at {address}" in assert_one_line_error(done, ExitCode.USAGE)


def test_an_output_capgen_did_not_write_is_refused_untouched(
    tmp_path: Path, model_folder: Path
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    done = _capgen(str(_photo(tmp_path)), "-o", str(out), cwd=tmp_path)
    assert_one_line_error(done, ExitCode.USAGE)
    assert out.read_text() == "my notes\n"


def test_a_parquet_folder_holding_other_files_is_refused(
    tmp_path: Path, model_folder: Path
) -> None:
    out = tmp_path / "captions.parquet"
    out.mkdir()
    (out / "mine.csv").write_text("a,b\n")
    done = _capgen(str(_photo(tmp_path)), "-o", str(out), "--resume", cwd=tmp_path)
    assert "capgen did not write" in assert_one_line_error(done, ExitCode.USAGE)
    assert sorted(p.name for p in out.iterdir()) == ["mine.csv"]


def test_without_the_extra_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from capgen.ray import connect

    real = importlib.util.find_spec
    monkeypatch.setattr(
        connect.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name)
    )
    with pytest.raises(connect.RayExtraMissing, match=r"pip install 'capgen\[ray\]'") as caught:
        connect.require_ray_extra()
    assert exit_code_for(caught.value) == ExitCode.USAGE
