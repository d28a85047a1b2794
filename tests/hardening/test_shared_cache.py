"""Issue 11 item 3: a cache safe to share.

A cache that root filled (a Docker build step, `capgen setup` as root), a
read-only cache and `CAPGEN_NO_CACHE=1` must each cost at most speed and one
warning line, never a caption. The unprivileged user is a real one: the
console script runs as uid/gid 65534 through util-linux `setpriv`, with a
home it cannot write (`HOME=/nonexistent`), the way a service account or a
container user runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from capgen_cli import capgen
from cli_helpers import write_photos
from tiny_model import write_tiny_model

NOBODY = 65534
WARNING = b"capgen: warning: cannot write the cache"


@pytest.fixture()
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder every user can traverse (pytest's own tmp folders are root-only, 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="capgen-issue11-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def as_nobody() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root (CI runs as root)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("util-linux setpriv is not installed, so no unprivileged user can be made")
    command = [setpriv, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    # A checkout under a root-only folder (mktemp -d makes 0700 ones) cannot be
    # run by another user at all: say so instead of failing on the environment.
    script = Path(sys.executable).with_name("capgen")  # the console script the tests run
    probe = subprocess.run(
        [*command, sys.executable, "-c", f"open({str(script)!r}).close()"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(
            f"uid {NOBODY} cannot read {script} (a parent folder of the checkout is not "
            "traversable by other users, e.g. mktemp -d's 0700): clone into a 0755 folder to run this"
        )
    return command


def _capgen(
    capgen_script: Path, args: list[str | Path], env: dict[str, str], prefix: list[str] = ()
) -> subprocess.CompletedProcess[bytes]:
    """The console script with exactly `env` on top of PATH (no CAPGEN_HOME unless given)."""
    base = {key: os.environ[key] for key in ("PATH", "LANG") if key in os.environ}
    env = {**base, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    return capgen(*args, env=env, script=capgen_script, prefix=prefix, timeout=120)


def _model_and_photos(shared: Path) -> tuple[Path, list[Path]]:
    model = write_tiny_model(shared / "model").folder
    photos = write_photos(shared / "photos", 3, seed=11)
    return model, photos


def _caption_args(shared: Path) -> tuple[list[str | Path], Path]:
    """(`caption -m MODEL PHOTOS…`, the cache folder to use) in the shared folder."""
    model, photos = _model_and_photos(shared)
    return ["caption", "-m", model, *photos], shared / "cache"


def _assert_quiet(done: subprocess.CompletedProcess[bytes], warnings_allowed: int) -> None:
    """Exit 0, no colour escapes, no onnxruntime lines: at most `warnings_allowed` capgen warnings."""
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, stderr
    assert b"\x1b[" not in done.stderr, stderr  # onnxruntime's coloured telemetry warning
    lines = stderr.splitlines()
    assert len(lines) <= warnings_allowed, stderr
    assert all(line.startswith(WARNING.decode()) for line in lines), stderr


def _cache_entries(home: Path) -> list[Path]:
    return [p for folder in ("optimized", "verified") for p in (home / folder).glob("*")]


def test_unprivileged_user_captions_with_a_cache_root_filled(
    capgen_script: Path, shared: Path, as_nobody: list[str]
) -> None:
    args, home = _caption_args(shared)
    filled = _capgen(capgen_script, args, {"CAPGEN_HOME": str(home), "HOME": str(shared)})
    _assert_quiet(filled, 0)
    entries = _cache_entries(home)
    assert any(p.parent.name == "optimized" for p in entries), entries
    for entry in entries:  # readable by the other users sharing the cache, never 0600
        assert entry.stat().st_mode & 0o044 == 0o044, (entry, oct(entry.stat().st_mode))

    done = _capgen(
        capgen_script, args, {"CAPGEN_HOME": str(home), "HOME": "/nonexistent"}, as_nobody
    )
    _assert_quiet(done, 0)  # every entry was a hit: nothing to write, nothing to say
    assert done.stdout == filled.stdout


def test_unreadable_and_damaged_entries_are_misses(
    capgen_script: Path, shared: Path, as_nobody: list[str]
) -> None:
    """Entries an older capgen left 0600 are unreadable to others; damaged ones are rebuilt."""
    args, home = _caption_args(shared)
    env = {"CAPGEN_HOME": str(home), "HOME": "/nonexistent"}
    expected = _capgen(capgen_script, args, env)
    _assert_quiet(expected, 0)
    for entry in _cache_entries(home):
        entry.chmod(0o600)

    unreadable = _capgen(capgen_script, args, env, as_nobody)
    _assert_quiet(unreadable, 1)
    assert unreadable.stdout == expected.stdout

    entries = sorted((home / "optimized").glob("*.onnx"))
    assert len(entries) == 3  # encoder, photo projection, decoder step
    for half in (False, True):  # garbage, then half-written graphs
        damaged = {}
        for entry in entries:
            damage = entry.read_bytes()[: entry.stat().st_size // 2] if half else b"not a graph"
            entry.write_bytes(damage)
            damaged[entry] = len(damage)
        done = _capgen(capgen_script, args, env)
        _assert_quiet(done, 0)
        assert done.stdout == expected.stdout
        for entry, size in damaged.items():  # rebuilt in place of the damaged ones
            assert entry.stat().st_size > size, entry


def test_read_only_cache_costs_one_warning_line(
    capgen_script: Path, shared: Path, as_nobody: list[str]
) -> None:
    model, photos = _model_and_photos(shared)
    home = shared / "cache"
    home.mkdir(mode=0o755)  # root's, empty: read-only to the unprivileged user
    args: list[str | Path] = ["caption", "-m", model, *photos]
    expected = _capgen(capgen_script, args, {"CAPGEN_NO_CACHE": "1", "HOME": "/nonexistent"})

    done = _capgen(
        capgen_script, args, {"CAPGEN_HOME": str(home), "HOME": "/nonexistent"}, as_nobody
    )

    _assert_quiet(done, 1)
    assert done.stderr.startswith(WARNING) and done.stderr.count(b"\n") == 1, done.stderr
    assert done.stdout == expected.stdout
    assert not list(home.iterdir())


def test_no_cache_variable_writes_nothing(capgen_script: Path, shared: Path) -> None:
    args, home = _caption_args(shared)
    cached = _capgen(capgen_script, args, {"CAPGEN_HOME": str(shared / "other"), "HOME": "/x"})
    _assert_quiet(cached, 0)

    done = _capgen(
        capgen_script, args, {"CAPGEN_HOME": str(home), "CAPGEN_NO_CACHE": "1", "HOME": "/x"}
    )

    _assert_quiet(done, 0)
    assert done.stdout == cached.stdout
    assert not home.exists()  # no stamps, no optimised graphs, not even the folder


def test_cache_follows_xdg_cache_home(capgen_script: Path, shared: Path) -> None:
    """Without CAPGEN_HOME the cache is $XDG_CACHE_HOME/capgen (a relative one is ignored)."""
    model, photos = _model_and_photos(shared)
    xdg = shared / "xdg"
    done = _capgen(
        capgen_script,
        ["caption", "-m", model, photos[0]],
        {"XDG_CACHE_HOME": str(xdg), "HOME": str(shared / "home")},
    )
    _assert_quiet(done, 0)
    assert list((xdg / "capgen" / "optimized").glob("*.onnx"))
    assert not (shared / "home").exists()

    relative = _capgen(
        capgen_script,
        ["caption", "-m", model, photos[0]],
        {"XDG_CACHE_HOME": "relative/cache", "HOME": str(shared / "home")},
    )
    _assert_quiet(relative, 0)
    assert list((shared / "home" / ".cache" / "capgen" / "optimized").glob("*.onnx"))
