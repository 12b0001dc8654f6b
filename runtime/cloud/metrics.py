"""Prometheus metrics of one server: requests, latency, bytes, batch sizes, in flight.

Each server has its own registry (two servers in one process do not mix), and
label values come only from what the server hosts: a request naming an unknown
model or cut is counted under "_unknown", so hostile names cannot grow the
number of series without bound.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from runtime.cloud.auth import check_bearer
from runtime.cloud.budget import MemoryBudget
from runtime.cloud.statistics import Statistics, TritonCollector
from runtime.errors import UnauthenticatedError

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
        self.statistics = Statistics()
        self.registry.register(TritonCollector(self.statistics))

    def host(self, tails: Iterable[tuple[str, str]]) -> None:
        """The (model, cut) tails the server hosts: the only label values used, and
        what the statistics count."""
        self.known = set(tails)
        self.statistics.host(self.known)

    def watch_budget(self, budget: MemoryBudget) -> None:
        """Expose the memory budget: bytes held now, the limit, refusals so far."""
        held = Gauge(
            "splitinfer_memory_held_bytes",
            "Bytes that requests hold now (requests, decoded tensors, unsent answers)",
            registry=self.registry,
        )
        held.set_function(lambda: budget.used)
        limit = Gauge(
            "splitinfer_memory_budget_bytes",
            "The memory budget (--max-memory)",
            registry=self.registry,
        )
        limit.set(budget.limit)
        refused = Gauge(
            "splitinfer_memory_refusals",
            "Reservations refused because the budget was full (RESOURCE_EXHAUSTED)",
            registry=self.registry,
        )
        refused.set_function(lambda: budget.refused)

    def call(self, protocol: str) -> Call:
        """Start timing one request (in flight until ``done``)."""
        self.in_flight.labels(protocol).inc()
        return Call(self, protocol)

    def batch(self, model: str, cut: str, size: int, infer_ms: float = 0.0) -> None:
        """One ONNX Runtime run of a tail: ``size`` samples in ``infer_ms``."""
        self.statistics.executed((model, cut), size, infer_ms)
        model, cut = self._names(model, cut)
        self.batch_size.labels(model, cut).observe(size)

    def _names(self, model: str, cut: str) -> tuple[str, str]:
        return (model, cut) if (model, cut) in self.known else (UNKNOWN, UNKNOWN)

    def serve(self, address: str, port: int, *, token: str | None = None) -> tuple[Any, int]:
        """An HTTP endpoint (/metrics) on ``address:port`` (0: a free port); with
        ``token``, a request without ``Authorization: Bearer <token>`` gets 401. Returns
        the HTTP server (``shutdown()`` stops it) and its port."""
        app = make_wsgi_app(self.registry)
        if token is not None:
            app = _bearer(app, token)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        server_class = type("MetricsServer", (_MetricsServer,), {"address_family": family})
        server: Any = make_server(address, port, app, server_class, _QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, server.server_port


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _bearer(app: Any, token: str) -> Any:
    """``app`` behind a bearer token (the gRPC services' own)."""
    expected = token.encode()

    def checked(environ: dict[str, Any], start_response: Any) -> Any:
        given = environ.get("HTTP_AUTHORIZATION")
        try:
            check_bearer([] if given is None else [given], expected)
        except UnauthenticatedError:
            pass
        else:
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b"the metrics need the server's bearer token\n"]

    return checked


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
    samples: int = 0
    timing: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # queue, in, infer, out

    def label(self, model: str, cut: str, codec: str | None = None) -> None:
        if self.model == UNKNOWN and (model, cut) in self.metrics.known:
            self.metrics.statistics.started((model, cut))  # pending until done
        self.model, self.cut = self.metrics._names(model, cut)
        if codec is not None:
            self.codec = codec if self.model != UNKNOWN else UNKNOWN

    def answered(
        self, samples: int, queue_ms: float, decode_ms: float, compute_ms: float, encode_ms: float
    ) -> None:
        """What the request was: its samples and where its time went in the server."""
        self.samples = samples
        self.timing = (queue_ms, decode_ms, compute_ms, encode_ms)

    def done(self, status: str) -> None:
        m = self.metrics
        if self.model != UNKNOWN:
            queue_ms, input_ms, infer_ms, output_ms = self.timing
            m.statistics.finished(
                (self.model, self.cut),
                ok=status == "OK",
                total_ms=(time.perf_counter() - self.start) * 1000,
                samples=self.samples,
                queue_ms=queue_ms,
                input_ms=input_ms,
                infer_ms=infer_ms,
                output_ms=output_ms,
            )
        labels = (self.protocol, self.model, self.cut)
        m.in_flight.labels(self.protocol).dec()
        m.requests.labels(*labels, self.codec, status).inc()
        m.latency.labels(*labels).observe(time.perf_counter() - self.start)
        if self.bytes_in:
            m.received.labels(*labels).inc(self.bytes_in)
        if self.bytes_out:
            m.sent.labels(*labels).inc(self.bytes_out)
