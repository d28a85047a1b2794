"""A damaged HDF5 file must not hang the converter: every read of an unverified one is bounded.

Found by the damaged-file fuzz test (2026-12-05): one changed byte in a Keras
.h5 made h5py's attribute read loop forever in HDF5's C code, so
`capgen convert model` never returned. No Python timeout interrupts C code;
capgen parses every HDF5 file it has not verified in a child process that is
killed at `UNTRUSTED_READ_TIMEOUT_S` (convert/isolated.py). These tests check
the crafted file really hangs h5py, that each reader of such files gives its
one-line error within the bound and leaves no process behind, and the child
mechanism itself: results, errors, deaths, nesting, Ctrl-C, stray output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import child_functions
import psutil
import pytest
from cli_helpers import Run, assert_one_line_error
from hanging_hdf5 import write_hdf5_that_hangs_h5py

from capgen.convert import isolated
from capgen.runtime.errors import CapgenError, ConversionError, InputError, ModelError

BOUND_S = 1.0  # the tests' bound; the hanging read spins a core until it is killed


@pytest.fixture
def short_bound(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(isolated, "UNTRUSTED_READ_TIMEOUT_S", BOUND_S)
    return BOUND_S


@pytest.fixture
def no_process_left_behind() -> Iterator[None]:
    """Fails the test if a process it started is still alive when it ends."""
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    yield
    left = [
        child
        for child in me.children(recursive=True)
        if child.pid not in before and _running(child)
    ]
    assert not left, f"still running: {[child.pid for child in left]}"


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # it ended between the listing and the question
        return False


@pytest.mark.convert
def test_the_crafted_file_really_hangs_h5py(tmp_path: Path) -> None:
    """Without this, the tests below could pass on a file that merely fails to read."""
    path = write_hdf5_that_hangs_h5py(tmp_path / "hangs.h5")
    read = "import h5py, sys; h5py.File(sys.argv[1], 'r').attrs.get('model_config')"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", read, str(path)], timeout=3, capture_output=True)


def _read_keras_model(path: Path) -> Any:
    from capgen.convert.keras_reader import read_keras_model

    return read_keras_model(path)


def _read_xception_weights(path: Path) -> Any:
    from capgen.convert.xception_onnx import read_xception_weights

    return read_xception_weights(path)


def _read_layout(path: Path) -> Any:
    from capgen.convert.weights_layout import read_layout

    return read_layout(path)


def _read_application_weights(path: Path) -> Any:
    from capgen.convert.application_graphs import vgg16
    from capgen.convert.application_weights import read_application_weights

    graph, output = vgg16()
    return read_application_weights(path, graph, output, "vgg16", "vgg16.h5", top=False)


def _check_user_model(path: Path) -> Any:
    from capgen.convert.keras_encoder import check_user_model

    return check_user_model(path)


READERS: dict[str, tuple[Callable[[Path], Any], type[CapgenError]]] = {
    "decoder .h5 (convert model)": (_read_keras_model, ModelError),
    "Xception weights (convert encoder --weights)": (_read_xception_weights, ConversionError),
    "application weights layout (Keras export path)": (_read_layout, InputError),
    "application weights (direct ONNX writer)": (_read_application_weights, InputError),
    "saved Keras encoder (--encoder model.h5)": (_check_user_model, InputError),
}


@pytest.mark.convert
@pytest.mark.parametrize("reader", READERS, ids=list(READERS))
def test_every_reader_of_unverified_hdf5_gives_up_at_the_bound(
    reader: str, tmp_path: Path, short_bound: float, no_process_left_behind: None
) -> None:
    read, error = READERS[reader]
    path = write_hdf5_that_hangs_h5py(tmp_path / "hangs.h5")
    started = time.monotonic()
    with pytest.raises(error) as raised:
        read(path)
    assert time.monotonic() - started < short_bound + 15
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    assert f"after {short_bound:g} s" in message and "abandoned" in message


@pytest.mark.convert
def test_a_saved_encoder_is_refused_before_keras_reads_a_heap_that_hangs(
    tmp_path: Path, short_bound: float, no_process_left_behind: None
) -> None:
    """Its config reads; the weight names Keras's loader (in a child with no bound) reads next
    would hang. The bounded check reads every attribute, so it stops there first."""
    from capgen.convert.keras_encoder import check_user_model

    path = write_hdf5_that_hangs_h5py(tmp_path / "encoder.h5", config_apart=True)
    config = "import h5py, sys; print(len(h5py.File(sys.argv[1], 'r').attrs['model_config']))"
    read = subprocess.run([sys.executable, "-c", config, str(path)], timeout=60, check=False)
    assert read.returncode == 0  # a check of the config alone would have let it through
    with pytest.raises(InputError, match=r"^Keras encoder .* was still being read after 1 s"):
        check_user_model(path)


@pytest.mark.convert
def test_an_attribute_of_too_many_values_is_refused_unread(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    from capgen.convert.keras_reader import MAX_ATTRIBUTE_VALUES
    from capgen.convert.weights_layout import read_layout

    path = tmp_path / "weights.h5"
    with h5py.File(path, "w", libver="latest") as handle:  # dense storage: attributes > 64 kB
        handle.attrs["layer_names"] = [b"conv1"]
        handle.create_group("conv1").attrs["notes"] = np.zeros(MAX_ATTRIBUTE_VALUES + 1, np.uint8)
    with pytest.raises(InputError, match=r"'/conv1' has an attribute 'notes' of 65,537 values"):
        read_layout(path)


@pytest.mark.convert
def test_a_hanging_copy_in_the_keras_cache_is_simply_not_used(
    tmp_path: Path, short_bound: float, no_process_left_behind: None
) -> None:
    """Keras's own ~/.keras copy is a shortcut, not an input: one that hangs is skipped."""
    from capgen.convert.weights import _read_notop_arrays

    assert _read_notop_arrays(write_hdf5_that_hangs_h5py(tmp_path / "hangs.h5")) is None


@pytest.mark.convert
def test_convert_model_on_a_hanging_h5_is_one_line_and_writes_nothing(
    run: Run, tmp_path: Path, short_bound: float, no_process_left_behind: None
) -> None:
    from keras_decoder_builders import tiny_encoder_onnx
    from pickle_builders import write_fake_tokenizer

    out = tmp_path / "out"
    done = run(
        "convert",
        "model",
        write_hdf5_that_hangs_h5py(tmp_path / "model_9.h5"),
        write_fake_tokenizer(tmp_path / "tokenizer.p", ["end", "start", "a", "dog"]),
        "-o",
        out,
        "--encoder",
        tiny_encoder_onnx(tmp_path / "encoder.onnx", 64),
    )
    assert_one_line_error(done, 3, "was still being read after 1 s and was abandoned")
    assert not out.exists()


# ---- the child mechanism (stdlib functions: no HDF5 needed) ----


def test_a_bounded_read_returns_its_result_from_another_process() -> None:
    assert isolated.read_untrusted(child_functions.own_pid, what="x", error=ModelError) != (
        os.getpid()
    )


def test_reads_nested_in_a_bounded_child_run_in_that_child() -> None:
    outer, inner = isolated.read_untrusted(
        child_functions.pids_of_nested_reads, what="x", error=ModelError
    )
    assert outer == inner != os.getpid()


def test_modules_in_the_working_folder_never_run_in_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -c` puts the working folder first on sys.path; the child does not."""
    marker = tmp_path / "ran"
    (tmp_path / "pickle.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    assert isolated.read_untrusted(child_functions.own_pid, what="x", error=ModelError)
    assert not marker.exists()


def test_a_capgen_error_in_the_child_arrives_as_itself() -> None:
    with pytest.raises(ModelError, match=r"^the file says no$"):
        isolated.read_untrusted(
            child_functions.raise_model_error, "the file says no", what="x", error=InputError
        )


def test_a_child_that_never_returns_is_killed_at_the_bound(
    short_bound: float, no_process_left_behind: None
) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match=r"^the file f\.h5 was still being read after 1 s"):
        isolated.read_untrusted(
            child_functions.sleep_for, 30.0, what="the file f.h5", error=InputError
        )
    assert time.monotonic() - started < short_bound + 15


def test_a_child_that_dies_is_the_callers_error_in_one_line() -> None:
    with pytest.raises(ModelError, match=r"^the file f\.h5 crashed the process that read it"):
        isolated.read_untrusted(child_functions.die, what="the file f.h5", error=ModelError)
    with pytest.raises(ConversionError, match=r"^exporting x was killed before it finished"):
        isolated.run_isolated(child_functions.die, what="exporting x")


def test_a_python_that_cannot_start_the_child_says_why_not_that_the_file_is_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedding application's sys.executable may not be a Python that imports capgen."""
    not_python = tmp_path / "not-python"
    not_python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: no capgen here' >&2\nexit 1\n")
    not_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(not_python))
    with pytest.raises(ModelError) as raised:
        isolated.read_untrusted(child_functions.own_pid, what="model file m.h5", error=ModelError)
    assert str(raised.value) == (
        f"reading model file m.h5 failed: the Python process capgen starts for it ({not_python}) "
        "said: ModuleNotFoundError: no capgen here"
    )
    with pytest.raises(ConversionError, match=r"^exporting x failed: .* no capgen here$"):
        isolated.run_isolated(child_functions.own_pid, what="exporting x")


def test_an_unpicklable_result_is_one_conversion_error() -> None:
    with pytest.raises(ConversionError, match=r"^\w+: .*[Pp]ickl"):
        isolated.run_isolated(child_functions.unpicklable_result, what="x")


def test_a_bounded_child_starts_one_blas_thread_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def blas_threads() -> str | None:
        return isolated.read_untrusted(
            child_functions.environment_value, "OPENBLAS_NUM_THREADS", what="x", error=ModelError
        )

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert blas_threads() == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert blas_threads() == "3"


def test_output_the_child_prints_does_not_corrupt_its_result() -> None:
    assert isolated.run_isolated(child_functions.print_then_return, 7, what="x") == 7


def test_ctrl_c_while_waiting_kills_the_child(no_process_left_behind: None) -> None:
    # Python's own Ctrl-C handler: xdist's workers ignore SIGINT (their controller takes it).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            # 30 s, not forever: without the interrupt this fails instead of hanging the suite
            isolated.run_isolated(child_functions.sleep_for, 30.0, what="x")
    finally:
        signal.signal(signal.SIGINT, previous)


def _top_level_script(folder: Path, call: str) -> Path:
    """A user's script that runs `call` at top level: no `if __name__ == "__main__":`."""
    script = folder / "script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(child_functions.__file__).parent)!r})\n"
        "import child_functions\n"
        "from capgen.convert.isolated import run_isolated\n"
        f"{call}\n"
    )
    return script


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_ends_with_a_parent_killed_outright(tmp_path: Path) -> None:
    """SIGKILL gives the parent no chance to kill its child; the kernel ends the child."""
    script = _top_level_script(tmp_path, "run_isolated(child_functions.sleep_for, 60.0, what='x')")
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 30
        children: list[psutil.Process] = []
        while not children and time.monotonic() < deadline:
            children = psutil.Process(parent.pid).children()
            time.sleep(0.05)
        assert children, "the parent started no child within 30 s"
        parent.kill()
        parent.wait()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        parent.kill()
        parent.wait()


def test_a_script_without_a_main_guard_can_convert(tmp_path: Path) -> None:
    """multiprocessing's spawn re-runs the caller's main module in the child; this child does not."""
    script = _top_level_script(
        tmp_path, "print('ran', run_isolated(child_functions.print_then_return, 5, what='x'))"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran 5\n"
