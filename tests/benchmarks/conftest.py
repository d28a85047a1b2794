"""Fixtures shared by the benchmark sections' tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from bench_shared import PeersRun


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default model's folder; the test is skipped where it is not built."""
    from capgen.runtime.captioner import resolve_model_dir
    from capgen.runtime.errors import CapgenError

    try:
        folder, _ = resolve_model_dir(None)
    except CapgenError as exc:
        pytest.skip(f"the default model is not built here ({exc}); `capgen setup` builds it")
    return folder


def _no_calibration() -> list[np.ndarray]:
    raise AssertionError("LiteRT is absent: its calibration photos must not be asked for")


@pytest.fixture(scope="session")
def peers_run(
    tmp_path_factory: pytest.TempPathFactory, flickr_photos: list[Path], default_model: Path
) -> PeersRun:
    """The peers section on the default model, 1 photo, 1 round, 1 thread; run once per worker.

    Its precision modes' costs (mode_costs.py) are part of it: test_peers_section.py checks
    the section, test_mode_costs.py the modes' figures, from this same run. LiteRT is blocked
    the way a missing package is seen (None in sys.modules: find_spec answers "not installed"),
    which also keeps its minute-long conversions out of the tests. The modes' untimed
    processes are left out (their numbers mean nothing here; a mode that cannot run still
    fails, in its timed process).
    """
    from capgen.benchmarks import peers
    from capgen.convert.weights import fetch_imagenet_weights

    scratch = tmp_path_factory.mktemp("peers-run")
    # Keras's reference features need TensorFlow (test_peers_section.py skips without it); the
    # modes' figures do not, and the section runs without it, saying so.
    keras = importlib.util.find_spec("tensorflow") is not None
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "ai_edge_litert", None)
        section = peers.measure_peers(
            default_model,
            flickr_photos[:1],
            rounds=1,
            threads=1,
            scratch=scratch / "scratch",
            echo=messages.append,
            weights=fetch_imagenet_weights() if keras else None,
            litert_cache=scratch / "litert",
            calibration=_no_calibration,
            mode_warmup=False,  # the modes' untimed processes: ~3 s of CPU, and no figure
        )
    return PeersRun(section, messages)
