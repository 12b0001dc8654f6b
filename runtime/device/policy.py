"""Where a request goes: the device's policy, a pure function of a snapshot of the
cost table (runtime.device.costs) and a link estimate.

Every path is priced by the one cost model (runtime.cost), the planner's: its
request's parts on the link as estimated, with the call's own costs from the
plan. For one request (``choose``) the policy takes the fastest split when it is
predicted ``local_margin`` times faster than running here and meets the deadline
(or when running here cannot meet it either); with ``objective="energy"`` the
split predicted to spend the least of the device's energy within the deadline
(``least_energy``). For a stream (``choose_stream``) the (cut, codec) with the
most frames per second, its slowest stage. What a path costs is learned only
from requests sent through it, so a path not measured for ``explore_s`` is tried
again (``trial``), at most once every EXPLORE_EVERY requests, with a wait that
keeps the request within EXPLORE_RATIO times the path it replaces.

Nothing here reads a clock, sleeps or calls a server: the snapshot carries the
time, and tests drive it with made-up costs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from runtime import cost
from runtime.cost import Breakdown, CallCosts, Link, Parts, Stages
from runtime.device.costs import Key, Snapshot
from runtime.device.options import EdgeOptions

EXPLORE_RATIO = 2.0  # a trial of a stale cut costs at most this many times the path taken
EXPLORE_EVERY = 10  # requests at least between two trials of a stale cut


@dataclass(frozen=True)
class Route:
    """Where one request goes: a (cut, codec) pair, and for a trial of a stale cut
    the longest wait for its answer."""

    key: Key
    wait_ms: float = math.inf
    trial: bool = False


class Policy:
    """The choices of one runtime: its options, the call's own costs (the plan's), the
    (cut, codec) pairs a single request may be sent with (``unary``; streams may use
    every path in the table, delta codecs included) and the server's workers, which
    share a stream's cloud stage."""

    def __init__(
        self,
        options: EdgeOptions,
        call: CallCosts = CallCosts(),
        *,
        unary: Collection[Key] | None = None,
        cloud_workers: int = 1,
    ) -> None:
        self.options = options
        self.call = call
        self.unary = None if unary is None else frozenset(unary)
        self.cloud_workers = cloud_workers

    # ---- pricing

    def price(self, parts: Parts, link: Link) -> Breakdown:
        return cost.price(parts, link, self.call)

    def predict(self, snapshot: Snapshot, key: Key, link: Link) -> float:
        """Predicted latency (ms) of one request through ``key``."""
        return self.price(snapshot.paths[key].parts, link).total_ms

    def local_ms(self, snapshot: Snapshot, link: Link) -> float:
        """Predicted latency (ms) of running the whole model here (the link unused)."""
        return self.price(snapshot.local, link).total_ms

    def energy(self, parts: Parts, link: Link) -> float:
        """A path's predicted device energy (mJ)."""
        power = self.options.power
        if power is None:
            raise ValueError("the device's energy needs its power model (power=...)")
        return cost.energy_mj(power, self.price(parts, link), link)

    def stages(self, parts: Parts, link: Link) -> Stages:
        """A stream's stages for one path, in ms per frame."""
        return cost.stages(self.price(parts, link), self.cloud_workers)

    def sends_alone(self, key: Key) -> bool:
        """Whether infer() sends with this path: the stream-only delta codecs are left
        to streams (alone, a delta frame is a key frame)."""
        return self.unary is None or key in self.unary

    # ---- choosing

    def choose(self, snapshot: Snapshot, link: Link) -> Route | None:
        """Where one request goes: a split, or None to run locally (a trial of a stale
        path, when one is due). Locally, whatever the costs, while the link is down."""
        if snapshot.link_down:
            return None
        options = {
            key: self.predict(snapshot, key, link)
            for key in snapshot.paths
            if self.sends_alone(key)
        }
        local = self.local_ms(snapshot, link)
        if not options:
            return None
        if self.options.objective == "energy":
            choice = self.least_energy(snapshot, options, local, link)
        else:
            choice = self._fastest(options, local)
        taken = options[choice] if choice else local
        return self.trial(snapshot, link, choice, taken) or (Route(choice) if choice else None)

    def _fastest(self, options: Mapping[Key, float], local_ms: float) -> Key | None:
        deadline = self.options.deadline_ms
        best = min(options, key=options.__getitem__)
        faster = options[best] * self.options.local_margin < local_ms
        # past the deadline the cloud is given up: a split predicted to miss it ends up
        # local anyway, unless the local run cannot meet the deadline either
        return best if faster and (options[best] <= deadline or local_ms > deadline) else None

    def least_energy(
        self,
        snapshot: Snapshot,
        options: Mapping[Key, float],
        local_ms: float,
        link: Link,
    ) -> Key | None:
        """The split predicted to spend the least device energy among those that meet the
        deadline, or None when running here does (or nothing meets it: then the fastest)."""
        deadline = self.options.deadline_ms
        energy = {k: self.energy(snapshot.paths[k].parts, link) for k in options}
        local_mj = self.energy(snapshot.local, link)
        feasible = [k for k in energy if options[k] <= deadline]
        if local_ms <= deadline:
            best = min(feasible, key=energy.__getitem__, default=None)
            return best if best is not None and energy[best] < local_mj else None
        if feasible:
            return min(feasible, key=energy.__getitem__)
        fastest = min(options, key=options.__getitem__)
        return fastest if options[fastest] < local_ms else None

    def choose_stream(self, snapshot: Snapshot, link: Link) -> Route | None:
        """Where a stream's frames go: the path with the most frames per second
        (``stream_objective="latency"``: the least latency), or None to run locally
        when that is better or the best split cannot meet the deadline."""
        keys = list(snapshot.paths)
        if not keys or snapshot.link_down:
            return None
        priced = {k: self.price(snapshot.paths[k].parts, link) for k in keys}
        latency = {k: b.total_ms for k, b in priced.items()}
        period = {k: cost.stages(b, self.cloud_workers).bottleneck_ms for k, b in priced.items()}
        local = self.local_ms(snapshot, link)
        score = period if self.options.stream_objective == "throughput" else latency
        # a delta codec priced as its key frame (not yet measured) is no worse: it goes first
        best = min(keys, key=lambda k: (score[k], latency[k], not k[1].startswith("delta+")))
        better = score[best] * self.options.local_margin < local
        deadline = self.options.deadline_ms
        if better and (latency[best] <= deadline or local > deadline):
            return Route(best)
        return None

    def trial(
        self, snapshot: Snapshot, link: Link, choice: Key | None, taken_ms: float
    ) -> Route | None:
        """A trial of the path seen least recently, when its costs are older than
        ``explore_s``, no trial ran for as long and EXPLORE_EVERY requests: its wait
        is what keeps the request within EXPLORE_RATIO times the path taken (its head,
        its wait, then a local run). Its server may have been busy and be idle now, or
        its first measurement noisy: what it costs is learned only by sending to it."""
        stale = snapshot.now - self.options.explore_s
        if snapshot.explored_at >= stale:
            return None
        if snapshot.requests - snapshot.explored_after < EXPLORE_EVERY:
            return None
        if not snapshot.breaker_closed:
            return None  # the prober finds out first whether the server is back
        local = self.local_ms(snapshot, link)
        waits = {}
        for key, seen in snapshot.paths.items():
            if key == choice or seen.last_seen > stale or not self.sends_alone(key):
                continue
            priced = self.price(seen.parts, link)
            wait_ms = EXPLORE_RATIO * taken_ms - local - priced.edge_ms - priced.encode_ms
            if wait_ms > priced.transfer_ms + priced.rtt_ms + priced.call_ms:  # in time
                waits[key] = wait_ms
        if not waits:
            return None
        key = min(waits, key=lambda k: snapshot.paths[k].last_seen)
        return Route(key, waits[key], trial=True)

    @staticmethod
    def remote_ms(priced: Breakdown) -> float:
        """What a priced split is predicted to take after its head: what a call waits
        for, at most (the hedge's measure)."""
        return priced.total_ms - priced.edge_ms - priced.edge_cold_ms
