"""What the device knows of its link: throughput each way and the round trip from
real transfers, and a circuit breaker that stops it from calling a server that is
not there.

Times come from a clock passed in (``time.monotonic`` by default), so tests can
drive them.
"""

from __future__ import annotations

import collections
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime.cost import Link

Clock = Callable[[], float]

MIN_BYTES_FOR_RATE = 16 * 1024  # smaller transfers say little about throughput


@dataclass(frozen=True)
class LinkEstimate:
    uplink_bps: float
    rtt_ms: float
    age_s: float  # since the last measurement of anything
    rate_age_s: float  # since the last throughput measurement
    rtt_age_s: float  # since the last round-trip measurement
    downlink_bps: float | None = None  # None: as fast as the uplink (nothing measured)
    downlink_age_s: float = math.inf  # since the last downlink measurement

    @property
    def link(self) -> Link:
        """The estimate as the cost model's link (runtime.cost)."""
        return Link(self.uplink_bps, self.rtt_ms, self.downlink_bps)


class LinkEstimator:
    """EWMA estimates of the uplink's and the downlink's throughput and of the
    round-trip time, seeded with defaults (a downlink of None: as fast as the
    uplink, until the downlink is measured).

    A sample of a call is its network time: the client's round trip minus the
    time the server says it spent and the call's own cost (``call_ms``, the
    plan's: gRPC and both ends' hops), so that the round trip is the cost model's.
    Calls under 16 KiB each way measure the RTT (what the throughput does not
    explain); larger ones measure the direction that carried more (what the RTT
    and the other direction, at its estimate, do not explain), in log space so
    that a halving and a doubling weigh the same. Each estimate moves toward the
    median of its last three samples, so one outlier moves nothing while a real
    change shows in two calls; the first sample replaces the seed, a guess.
    """

    def __init__(
        self,
        *,
        uplink_bps: float = 10e6,
        rtt_ms: float = 40.0,
        downlink_bps: float | None = None,
        alpha: float = 0.5,
        clock: Clock = time.monotonic,
    ) -> None:
        self.alpha = alpha
        self.clock = clock
        self._log_rate = math.log(uplink_bps)
        self._log_down = None if downlink_bps is None else math.log(downlink_bps)
        self._rtt = rtt_ms
        self._updated = self._rate_updated = self._rtt_updated = clock()
        self._down_updated = -math.inf
        self._rates: collections.deque[float] = collections.deque(maxlen=3)
        self._downs: collections.deque[float] = collections.deque(maxlen=3)
        self._rtts: collections.deque[float] = collections.deque(maxlen=3)
        self._lock = threading.Lock()

    def estimate(self) -> LinkEstimate:
        with self._lock:
            now = self.clock()
            return LinkEstimate(
                math.exp(self._log_rate),
                self._rtt,
                now - self._updated,
                now - self._rate_updated,
                now - self._rtt_updated,
                None if self._log_down is None else math.exp(self._log_down),
                now - self._down_updated,
            )

    def _down_rate(self) -> float:
        return math.exp(self._log_rate if self._log_down is None else self._log_down)

    def observe(self, bytes_sent: float, network_ms: float, bytes_received: float = 0.0) -> None:
        """One call: bytes on the wire each way and its network time in ms (beyond the
        server's time and the call's own cost)."""
        network_ms = max(network_ms, 0.01)
        with self._lock:
            up_ms = bytes_sent * 8 / math.exp(self._log_rate) * 1000
            down_ms = bytes_received * 8 / self._down_rate() * 1000
            if max(bytes_sent, bytes_received) < MIN_BYTES_FOR_RATE:
                self._rtt = self._blend_rtt(max(network_ms - up_ms - down_ms, 0.01))
            elif bytes_sent >= bytes_received:
                rest = network_ms - self._rtt - down_ms
                self._blend_rate(bytes_sent, max(rest, 0.05 * network_ms))
            else:
                rest = network_ms - self._rtt - up_ms
                self._blend_down(bytes_received, max(rest, 0.05 * network_ms))
            self._updated = self.clock()

    def observe_download(self, bytes_received: float, transfer_ms: float) -> None:
        """A downlink sample free of the round trip: an answer of ``bytes_received``
        took ``transfer_ms`` longer than an empty call just before (a pair of probes)."""
        with self._lock:
            self._blend_down(bytes_received, max(transfer_ms, 0.01))
            self._updated = self.clock()

    def _blend_down(self, nbytes: float, transfer_ms: float) -> None:
        self._downs.append(math.log(nbytes * 8 / (transfer_ms / 1000)))
        robust = statistics.median(self._downs)
        if (
            self._log_down is None or len(self._downs) == 1
        ):  # a measurement, where there was a guess
            self._log_down = robust
        else:
            self._log_down += self.alpha * (robust - self._log_down)
        self._down_updated = self.clock()

    def observe_transfer(self, bytes_sent: float, transfer_ms: float) -> None:
        """A throughput sample free of the round trip: ``bytes_sent`` took ``transfer_ms``
        longer than an empty call just before (a pair of probes)."""
        with self._lock:
            self._blend_rate(bytes_sent, max(transfer_ms, 0.01))
            self._updated = self.clock()

    def _blend_rate(self, bytes_sent: float, transfer_ms: float) -> None:
        self._rates.append(math.log(bytes_sent * 8 / (transfer_ms / 1000)))
        robust = statistics.median(self._rates)
        first = len(self._rates) == 1  # a measurement, where there was a guess
        self._log_rate += (1.0 if first else self.alpha) * (robust - self._log_rate)
        self._rate_updated = self.clock()

    def observe_rtt(self, rtt_ms: float) -> None:
        """An empty probe's round trip."""
        with self._lock:
            self._rtt = self._blend_rtt(max(rtt_ms, 0.01))
            self._updated = self.clock()

    def _blend_rtt(self, sample: float) -> float:
        self._rtt_updated = self.clock()
        self._rtts.append(sample)
        if len(self._rtts) == 1:  # a measurement, where there was a guess
            return sample
        return (1 - self.alpha) * self._rtt + self.alpha * statistics.median(self._rtts)


class CircuitBreaker:
    """Closed: calls go through. After ``threshold`` failures in a row it opens: no
    call goes through until ``backoff_s`` has passed, when one trial (half-open) may;
    its success closes the breaker, its failure doubles the wait, up to ``max_backoff_s``.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(
        self,
        *,
        threshold: int = 1,
        backoff_s: float = 0.25,
        max_backoff_s: float = 0.5,
        clock: Clock = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.initial_backoff = backoff_s
        self.max_backoff = max_backoff_s
        self.clock = clock
        self.failures = 0
        self.backoff = backoff_s
        self.opened_at = 0.0
        self.state = self.CLOSED
        self.trial_running = False
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether a call may go to the server now (at most one trial while half-open)."""
        with self._lock:
            if self.state == self.CLOSED:
                return True
            if self.state == self.OPEN and self.clock() - self.opened_at >= self.backoff:
                self.state = self.HALF_OPEN
            if self.state == self.HALF_OPEN and not self.trial_running:
                self.trial_running = True
                return True
            return False

    def blocked(self) -> bool:
        """Whether ``allow`` would refuse a call now (asking changes nothing)."""
        with self._lock:
            if self.state == self.OPEN:
                return self.clock() - self.opened_at < self.backoff
            return self.state == self.HALF_OPEN and self.trial_running

    def success(self) -> None:
        with self._lock:
            self.state, self.failures, self.trial_running = self.CLOSED, 0, False
            self.backoff = self.initial_backoff

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            was_trial = self.state == self.HALF_OPEN
            self.trial_running = False
            if was_trial:
                self.backoff = min(self.backoff * 2, self.max_backoff)
            if was_trial or self.failures >= self.threshold:
                self.state, self.opened_at = self.OPEN, self.clock()

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"state": self.state, "failures": self.failures, "backoff_s": self.backoff}
