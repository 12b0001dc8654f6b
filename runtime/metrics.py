"""Prometheus metrics of one server: requests, latency, bytes, batch sizes, in flight.

Each server has its own registry (two servers in one process do not mix), and
label values come only from what the server hosts: a request naming an unknown
model or cut is counted under "_unknown", so hostile names cannot grow the
number of series without bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

UNKNOWN = "_unknown"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's metrics; ``serve(address, port)`` exposes them over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("protocol", "model", "cut")
        self.requests = Counter(
            "splitinfer_requests",
            "Inference requests answered, by model, cut, codec and gRPC status",
            (*labels, "codec", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "splitinfer_request_seconds",
            "Time from a request's arrival to its answer, in the server",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.received = Counter(
            "splitinfer_received_bytes",
            "Tensor payload bytes received",
            labels,
            registry=self.registry,
        )
        self.sent = Counter(
            "splitinfer_sent_bytes", "Tensor payload bytes sent", labels, registry=self.registry
        )
        self.batch_size = Histogram(
            "splitinfer_batch_size",
            "Samples per ONNX Runtime call of a tail",
            ("model", "cut"),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "splitinfer_in_flight_requests",
            "Inference requests being answered now",
            ("protocol",),
            registry=self.registry,
        )
        self.known: set[tuple[str, str]] = set()  # (model, cut) pairs the server hosts

    def call(self, protocol: str) -> Call:
        """Start timing one request (in flight until ``done``)."""
        self.in_flight.labels(protocol).inc()
        return Call(self, protocol)

    def batch(self, model: str, cut: str, size: int) -> None:
        model, cut = self._names(model, cut)
        self.batch_size.labels(model, cut).observe(size)

    def _names(self, model: str, cut: str) -> tuple[str, str]:
        return (model, cut) if (model, cut) in self.known else (UNKNOWN, UNKNOWN)

    def serve(self, address: str, port: int) -> tuple[Any, int]:
        """An HTTP endpoint (/metrics) on ``address:port`` (0: a free port); returns the
        HTTP server (``shutdown()`` stops it) and its port."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return server, server.server_port


@dataclass
class Call:
    """One request's metrics, recorded once by ``done``."""

    metrics: Metrics
    protocol: str
    model: str = UNKNOWN
    cut: str = UNKNOWN
    codec: str = "raw"
    bytes_in: int = 0
    bytes_out: int = 0
    start: float = field(default_factory=time.perf_counter)

    def label(self, model: str, cut: str, codec: str | None = None) -> None:
        self.model, self.cut = self.metrics._names(model, cut)
        if codec is not None:
            self.codec = codec if self.model != UNKNOWN else UNKNOWN

    def done(self, status: str) -> None:
        m = self.metrics
        labels = (self.protocol, self.model, self.cut)
        m.in_flight.labels(self.protocol).dec()
        m.requests.labels(*labels, self.codec, status).inc()
        m.latency.labels(*labels).observe(time.perf_counter() - self.start)
        if self.bytes_in:
            m.received.labels(*labels).inc(self.bytes_in)
        if self.bytes_out:
            m.sent.labels(*labels).inc(self.bytes_out)
