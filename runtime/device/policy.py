"""Where a request goes: the device's policy."""

from __future__ import annotations

import math
from dataclasses import dataclass

EXPLORE_RATIO = 2.0  # a trial of a stale cut costs at most this many times the path taken
EXPLORE_EVERY = 10  # requests at least between two trials of a stale cut


@dataclass(frozen=True)
class _Route:
    """Where one request goes: a (cut, codec) pair, and for a trial of a stale cut
    the longest wait for its answer."""

    key: tuple[str, str]
    wait_ms: float = math.inf
    trial: bool = False
