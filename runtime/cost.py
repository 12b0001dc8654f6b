"""The cost model, one for the planner and the device: what a link carries and what
a stream's stages take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.errors import PlanError


@dataclass(frozen=True)
class Link:
    """A link as the cost model sees it."""

    uplink_bps: float
    rtt_ms: float
    downlink_bps: float | None = None  # None: as fast as the uplink
    # what a split call costs beyond the RTT, its compute and its bytes: fixed, and per
    # tensor sent (None: as the cloud profile measured it on loopback)
    call_ms: float | None = None
    tensor_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.uplink_bps > 0 or (self.downlink_bps is not None and not self.downlink_bps > 0):
            raise PlanError("link rates must be positive")
        if not self.rtt_ms >= 0:
            raise PlanError("the round-trip time cannot be negative")
        for cost in (self.call_ms, self.tensor_ms):
            if cost is not None and not (math.isfinite(cost) and cost >= 0):
                raise PlanError("a call's cost must be finite and at least 0")

    def up_ms(self, nbytes: float) -> float:
        return nbytes * 8 / self.uplink_bps * 1000.0

    def down_ms(self, nbytes: float) -> float:
        return nbytes * 8 / (self.downlink_bps or self.uplink_bps) * 1000.0

    def describe(self) -> str:
        text = f"uplink {self.uplink_bps / 1e6:g} Mbit/s, RTT {self.rtt_ms:g} ms"
        if self.downlink_bps:
            text += f", downlink {self.downlink_bps / 1e6:g} Mbit/s"
        return text


@dataclass(frozen=True)
class Stages:
    """One frame's time in each stage of the pipeline."""

    device_ms: float  # head and encode
    uplink_ms: float
    cloud_ms: float  # decode and tail, per worker
    downlink_ms: float

    @property
    def bottleneck_ms(self) -> float:
        return max(self.device_ms, self.uplink_ms, self.cloud_ms, self.downlink_ms)

    @property
    def bottleneck(self) -> str:
        """The slowest stage: device, uplink, cloud or downlink (the first of equals)."""
        times = {
            "device": self.device_ms,
            "uplink": self.uplink_ms,
            "cloud": self.cloud_ms,
            "downlink": self.downlink_ms,
        }
        return max(times, key=lambda name: times[name])
