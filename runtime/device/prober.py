"""Probes that keep the link estimator's figures fresh while the device is idle, and
close the circuit breaker as soon as the server answers again.

An empty call measures the round trip (beyond the call's own cost, the plan's);
a call with a payload each way, measured against an empty call just after it,
measures that direction's throughput free of the round trip. A sample taken
while a split was on the link is dropped: it measured the split's queue. The
runtime says whether one is (``busy``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from runtime.device.client import SplitClient
from runtime.device.link import CircuitBreaker, LinkEstimator
from runtime.errors import SplitInferError

IDLE_AFTER_S = 5.0  # no throughput probes on a link the device has not used for this long
MIN_PROBE_BYTES = 16 * 1024
MAX_PROBE_BYTES = 256 * 1024


class Prober:
    """Probes ``client`` for ``link`` and ``breaker``. ``busy()`` is a count of calls
    on the link now and of calls made so far (a change between two reads: a call
    went meanwhile); ``last_used()`` is when the device last took a request."""

    def __init__(
        self,
        client: SplitClient,
        link: LinkEstimator,
        breaker: CircuitBreaker,
        *,
        busy: Callable[[], tuple[int, int]],
        last_used: Callable[[], float],
        call_ms: float = 0.0,
        on_reconnect: Callable[[], None] = lambda: None,
        downlink: bool = False,
        interval_s: float = 0.2,
        stale_s: float = 0.5,
    ) -> None:
        self.client = client
        self.link = link
        self.breaker = breaker
        self.busy = busy
        self.last_used = last_used
        self.call_ms = call_ms
        self.on_reconnect = on_reconnect
        # whether answers are large enough to measure the downlink by: a downlink probe
        # sized by a stale fast estimate would hold a slowed link up for a second
        self.downlink = downlink
        self.interval_s = interval_s
        self.stale_s = stale_s
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._downlink_next = False  # rate probes measure the uplink and downlink in turn
        self._gone = False  # a probe found no server (a late split says nothing of that)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._closing.wait(self.interval_s):
            open_ = self.breaker.snapshot()["state"] != CircuitBreaker.CLOSED
            link = self.link.estimate()
            used = time.monotonic() - self.last_used() < IDLE_AFTER_S
            # small splits say nothing of the throughput, large ones little of the RTT
            rate = open_ or (used and link.rate_age_s > self.stale_s)
            rtt = open_ or (used and link.rtt_age_s > self.stale_s)
            if rate or rtt:
                self.probe(rate=rate)  # an empty call always: the round trip

    def probe(self, *, rate: bool, downlink: bool | None = None) -> None:
        """An empty call (is the server there, and the round trip), then for ``rate`` one
        with a payload (up, or with ``downlink`` down; None: in turn) and another empty
        one: what the payload adds to the faster empty call (the first may have opened
        the connection) is that direction's throughput."""
        if self.busy()[0]:  # a split is on the link: its answer will tell
            return
        if not self.breaker.allow():
            return
        link = self.link.estimate()
        timeout = max(0.5, 4 * link.rtt_ms / 1000)
        try:
            empty_ms = self._quiet(0, 0, timeout)
        except SplitInferError:
            self.breaker.failure()
            self._gone = True
            return
        trusted = self.breaker.snapshot()["state"] == CircuitBreaker.CLOSED
        self.breaker.success()
        if self._gone:  # the server answers again: it may be another one now
            self._gone = False
            self.on_reconnect()
        if downlink is None:
            downlink, self._downlink_next = self._downlink_next, not self._downlink_next
            downlink = downlink and self.downlink
        rate_bps = link.link.downlink_rate if downlink else link.uplink_bps
        # about 30 ms of the link as estimated (16-256 KiB), when that takes < 0.2 s; after
        # a failure the estimate is not to be trusted: the smallest payload
        size = int(min(max(rate_bps * 0.03 / 8, MIN_PROBE_BYTES), MAX_PROBE_BYTES))
        if not trusted:
            size = MIN_PROBE_BYTES
        payloads = getattr(self.client, "probes_payload", True)
        if empty_ms is not None and rate and payloads and size * 8 / rate_bps < 0.2:
            with contextlib.suppress(SplitInferError):  # slow, not gone: no breaker
                up, down = (0, size) if downlink else (size, 0)
                loaded_ms = self._quiet(up, down, 4 * timeout)
                again_ms = self._quiet(0, 0, timeout)
                if loaded_ms is not None and again_ms is not None:
                    empty_ms = min(empty_ms, again_ms)
                    if loaded_ms > empty_ms:  # else too small a payload to tell
                        if downlink:
                            self.link.observe_download(size, loaded_ms - empty_ms)
                        else:
                            self.link.observe_transfer(size, loaded_ms - empty_ms)
        if empty_ms is not None:
            self.link.observe_rtt(max(empty_ms - self.call_ms, 0.01))

    def _quiet(self, send: int, receive: int, timeout: float) -> float | None:
        """The network time (ms) of a probe carrying these bytes each way (sent in any
        case), or None when a split was on the link meanwhile."""
        before = self.busy()
        round_trip, server_ms = self.client.probe(send, receive, timeout=timeout)
        after = self.busy()
        if before[0] or after != before:
            return None
        return round_trip - server_ms
