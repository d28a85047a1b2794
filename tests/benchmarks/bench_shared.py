"""What the benchmark tests share beyond fixtures: the peers run's type and its xdist group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

# The tests that read the one peers-section run (conftest's `peers_run`) go to one xdist
# worker, so the section (two dozen processes, its precision modes' cold starts among them)
# runs once.
SHARES_PEERS_RUN = pytest.mark.xdist_group("bench-peers-run")


@dataclass(frozen=True)
class PeersRun:
    """One smoke run of the peers section: what it returned and the lines it printed."""

    section: dict[str, Any]
    messages: list[str]
