"""What the device has measured of each path it may take: the cost table."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

EWMA = 0.3
PENALTY_FADE_S = 1.0  # a late call's penalty fades by e every second


@dataclass
class _CutCosts:
    """What one cut recently cost, per request (ms, bytes)."""

    head_ms: float
    encode_ms: float = 0.0
    server_ms: float = 0.0
    decode_ms: float = 0.0
    up_bytes: float = 0.0
    down_bytes: float = 0.0
    penalty_ms: float = 0.0  # after calls that were late: what they cost at least, fading
    penalty_at: float = 0.0
    measured_at: float = field(default_factory=time.monotonic)  # by the last answer
    tried_at: float = 0.0  # the last trial's start

    def penalty(self) -> float:
        return self.penalty_ms * math.exp(-(time.monotonic() - self.penalty_at) / PENALTY_FADE_S)

    def last_seen(self) -> float:
        return max(self.measured_at, self.tried_at)


def _blend(old: float, new: float, weight: float = EWMA) -> float:
    return (1 - weight) * old + weight * new
