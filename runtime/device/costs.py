"""What the device has measured of each path it may take: the cost table.

One entry per (cut, codec) the runtime may send with, and one for the local run.
An entry starts from the plan's figures for that path (runtime.cost.Parts: the
profiles' head, encoding, bytes, server time, and each side's run after idling)
with the device's own warm-up measurements of its head and encoding in place of
the profile's, and moves toward each answer's measurements (EWMA). A measured
request includes whatever its runs after idling cost, so an entry's cold terms
fade by the same weight as the measurements come in. A call that was late adds
a penalty that fades within seconds (a link that was down, not slow, is tried
again). The table only records; the policy (runtime.device.policy) decides from
a ``snapshot`` of it.

Times come from a clock passed in (``time.monotonic`` by default), so tests can
drive them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from runtime.cost import Parts

EWMA = 0.3
PENALTY_FADE_S = 1.0  # a late call's penalty fades by e every second
LOCAL = ("\0local", "-")  # the local run's key beside the (cut, codec) pairs

Key = tuple[str, str]  # (cut id, codec label)
Clock = Callable[[], float]


def blend(old: float, new: float, weight: float = EWMA) -> float:
    return (1 - weight) * old + weight * new


@dataclass
class PathCosts:
    """What one path recently cost a request (ms, bytes)."""

    head_ms: float  # the head here (the local run: the whole model)
    encode_ms: float = 0.0
    server_ms: float = 0.0  # what the server says it spent: decode, tail, encode
    answer_ms: float = 0.0  # reading the answer here
    up_bytes: float = 0.0  # the tensors' payloads, encoded
    down_bytes: float = 0.0  # the answer's payload
    tensors: tuple[str, ...] = ()  # the tensors sent (none: the local run)
    edge_cold_ms: float = 0.0  # the plan's run after idling, until measurements replace it
    cloud_cold_ms: float = 0.0
    penalty_ms: float = 0.0  # after calls that were late: what they cost at least, fading
    penalty_at: float = 0.0
    measured_at: float = 0.0  # by the last answer
    tried_at: float = 0.0  # the last trial's start

    def penalty(self, now: float) -> float:
        return self.penalty_ms * math.exp(-(now - self.penalty_at) / PENALTY_FADE_S)

    def last_seen(self) -> float:
        return max(self.measured_at, self.tried_at)

    def parts(self, now: float) -> Parts:
        """This path's request for the cost model, its penalty as it stands at ``now``."""
        return Parts(
            edge_ms=self.head_ms,
            encode_ms=self.encode_ms,
            sent_bytes=self.up_bytes,
            tensors=self.tensors,
            cloud_ms=self.server_ms,
            output_bytes=self.down_bytes,
            answer_ms=self.answer_ms,
            edge_cold_ms=self.edge_cold_ms,
            cloud_cold_ms=self.cloud_cold_ms,
            penalty_ms=self.penalty(now),
        )

    @classmethod
    def planned(cls, parts: Parts) -> PathCosts:
        """An entry from the plan's parts for a path: the server's time is its decoding
        and its tail (what it reports)."""
        return cls(
            head_ms=parts.edge_ms,
            encode_ms=parts.encode_ms,
            server_ms=parts.cloud_ms + parts.decode_ms,
            answer_ms=parts.answer_ms,
            up_bytes=parts.sent_bytes,
            down_bytes=parts.output_bytes,
            tensors=parts.tensors,
            edge_cold_ms=parts.edge_cold_ms,
            cloud_cold_ms=parts.cloud_cold_ms,
        )


def plan_paths(plan: Mapping[str, Any] | None) -> tuple[dict[Key, PathCosts], PathCosts | None]:
    """The plan's parts of every (cut, codec) it priced, and of the local run (None:
    an older plan without them), as cost-table entries."""
    paths, local = {}, None
    for cut in (plan or {}).get("cuts", []):
        for label, data in cut.get("parts", {}).items():
            entry = PathCosts.planned(Parts.from_json(data))
            if entry.tensors:
                paths[(str(cut["id"]), str(label))] = entry
            else:
                local = entry
    return paths, local


@dataclass(frozen=True)
class Seen:
    """One path in a snapshot: its request for the cost model and when it was last
    measured or tried."""

    parts: Parts
    last_seen: float


@dataclass(frozen=True)
class Snapshot:
    """The table at one moment, for the policy: every path, the local run, and what
    the trials of stale paths need (requests started, the last trial's time and
    request count, whether calls go through)."""

    now: float
    paths: Mapping[Key, Seen]
    local: Parts
    requests: int = 0
    explored_at: float = -math.inf
    explored_after: int = 0
    breaker_closed: bool = True
    link_down: bool = False  # the circuit breaker lets no call through now


@dataclass
class Measured:
    """What one answered split measured."""

    head_ms: float
    encode_ms: float
    server_ms: float
    answer_ms: float
    up_bytes: float
    down_bytes: float


class CostTable:
    """Every path's costs (``paths``, with ``LOCAL`` the local run's), thread-safe."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.paths: dict[Key, PathCosts] = {}
        self.local = PathCosts(0.0)
        self.requests = 0  # requests started
        self.explored_at = clock()  # the last trial's start, and the requests by then
        self.explored_after = 0
        self.lock = threading.Lock()

    def set(self, key: Key, costs: PathCosts) -> None:
        with self.lock:
            self.paths[key] = costs

    def get(self, key: Key) -> PathCosts | None:
        with self.lock:
            return self.paths.get(key)

    def started(self) -> None:
        """A request was started (a trial waits for EXPLORE_EVERY of them)."""
        with self.lock:
            self.requests += 1

    def snapshot(self, *, breaker_closed: bool = True, link_down: bool = False) -> Snapshot:
        with self.lock:
            now = self.clock()
            return Snapshot(
                now=now,
                paths={k: Seen(c.parts(now), c.last_seen()) for k, c in self.paths.items()},
                local=self.local.parts(now),
                requests=self.requests,
                explored_at=self.explored_at,
                explored_after=self.explored_after,
                breaker_closed=breaker_closed,
                link_down=link_down,
            )

    def claim_trial(self, key: Key, snapshot: Snapshot) -> bool:
        """Record a trial of ``key`` that the policy chose from ``snapshot``; False when
        another request's trial was recorded since (one trial at a time)."""
        with self.lock:
            if self.explored_at != snapshot.explored_at or key not in self.paths:
                return False
            now = self.clock()
            self.paths[key].tried_at = now
            self.explored_at, self.explored_after = now, self.requests
            return True

    def observe(self, key: Key, measured: Measured, weight: float = EWMA) -> bool:
        """An answered split's measurements blended into its path (weight 1: they
        replace what was there); False when the path is no longer in the table."""
        with self.lock:
            c = self.paths.get(key)
            if c is None:
                return False
            c.head_ms = blend(c.head_ms, measured.head_ms, weight)
            c.encode_ms = blend(c.encode_ms, measured.encode_ms, weight)
            c.server_ms = blend(c.server_ms, measured.server_ms, weight)
            c.answer_ms = blend(c.answer_ms, measured.answer_ms, weight)
            c.up_bytes = blend(c.up_bytes, measured.up_bytes, weight)
            c.down_bytes = measured.down_bytes
            # the measurements include whatever the runs after idling cost
            c.edge_cold_ms = blend(c.edge_cold_ms, 0.0, weight)
            c.cloud_cold_ms = blend(c.cloud_cold_ms, 0.0, weight)
            c.penalty_ms = 0.0  # an answer: what it cost is known
            c.measured_at = self.clock()
            return True

    def observe_local(self, local_ms: float) -> None:
        with self.lock:
            self.local.head_ms = blend(self.local.head_ms, local_ms)
            self.local.edge_cold_ms = blend(self.local.edge_cold_ms, 0.0)

    def penalize(self, key: Key, late_ms: float, remote_ms: float) -> None:
        """A call through ``key`` had no answer after ``late_ms`` where ``remote_ms``
        was predicted: the path costs more than was waited, for a while."""
        with self.lock:
            c = self.paths.get(key)
            if c is None:
                return
            now = self.clock()
            c.penalty_ms = c.penalty(now) + max(1.5 * late_ms - remote_ms, 0.0)
            c.penalty_at = now

    def drop(self, cut_id: str) -> None:
        """Forget every path through ``cut_id``."""
        with self.lock:
            for key in [k for k in self.paths if k[0] == cut_id]:
                del self.paths[key]

    def copy_as(self, key: Key, source: Key) -> None:
        """``key`` priced as ``source`` until measured (a delta codec as its key frame)."""
        with self.lock:
            if key not in self.paths and source in self.paths:
                self.paths[key] = replace(self.paths[source])
