"""Where capgen keeps what it builds: one cache folder, set by CAPGEN_HOME.

Like fastembed's cache folder, one environment variable moves everything
(weights, exported encoders, the default model) so CI, containers and users
with small home directories can put it where they have room.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CAPGEN_HOME"
WEIGHTS_FILENAME = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


def capgen_home() -> Path:
    """The cache folder: $CAPGEN_HOME, else ~/.cache/capgen."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "capgen"


def weights_dir() -> Path:
    return capgen_home() / "weights"


def encoders_dir() -> Path:
    return capgen_home() / "encoders"


def default_model_dir() -> Path:
    """The assembled default model folder (built by `capgen setup`)."""
    return capgen_home() / "models" / "default"
