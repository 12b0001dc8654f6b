"""Per-tail inference statistics, as Triton keeps them: the one store behind KServe's
statistics extension (ModelStatistics on gRPC, ``/v2/models/{m}/stats`` on REST)
and the Triton-named Prometheus metrics, so that all three always agree.

For each tail (a KServe model ``<model>__<cut>``, version "1"), counted over both
protocols: requests that succeeded and failed with their time in the server,
samples inferred (``inference_count``), ONNX Runtime runs (``execution_count``,
fewer than requests when batches form), and where a request's time went: queue
(waiting for a worker), compute input (decoding its tensors), compute infer (the
tail) and compute output (encoding the answer), per request and per batch size.
Times are nanoseconds, as Triton's statistics; its metrics give microseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from tritonclient.grpc import service_pb2 as kpb

from runtime.kserve_types import model_name

VERSION = "1"


@dataclass
class Duration:
    """A count of events and the nanoseconds they took."""

    count: int = 0
    ns: int = 0

    def add(self, ms: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(ms * 1e6)

    def proto(self) -> kpb.StatisticDuration:
        return kpb.StatisticDuration(count=self.count, ns=self.ns)


@dataclass
class BatchStatistics:
    """The runs of one batch size: decoding, the tail, encoding."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class TailStatistics:
    """Everything counted for one tail."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    pending: int = 0
    batches: dict[int, BatchStatistics] = field(default_factory=dict)


class Statistics:
    """The statistics of every tail a server hosts. Thread-safe."""

    def __init__(self, tails: Iterable[tuple[str, str]] = ()) -> None:
        self._lock = threading.Lock()
        self.tails: dict[tuple[str, str], TailStatistics] = {t: TailStatistics() for t in tails}

    def host(self, tails: Iterable[tuple[str, str]]) -> None:
        """Count these tails too."""
        with self._lock:
            for tail in tails:
                self.tails.setdefault(tail, TailStatistics())

    def started(self, tail: tuple[str, str]) -> None:
        with self._lock:
            if tail in self.tails:
                self.tails[tail].pending += 1

    def finished(
        self,
        tail: tuple[str, str],
        *,
        ok: bool,
        total_ms: float,
        samples: int = 0,
        queue_ms: float = 0.0,
        input_ms: float = 0.0,
        infer_ms: float = 0.0,
        output_ms: float = 0.0,
    ) -> None:
        """One request of ``tail`` ended (``started`` was called for it)."""
        with self._lock:
            stats = self.tails.get(tail)
            if stats is None:
                return
            stats.pending -= 1
            if not ok:
                stats.fail.add(total_ms)
                return
            stats.success.add(total_ms)
            stats.queue.add(queue_ms)
            stats.compute_input.add(input_ms)
            stats.compute_infer.add(infer_ms)
            stats.compute_output.add(output_ms)
            stats.inference_count += samples
            stats.last_inference_ms = int(time.time() * 1000)

    def executed(self, tail: tuple[str, str], samples: int, infer_ms: float) -> None:
        """One ONNX Runtime run of ``tail`` on ``samples`` samples."""
        with self._lock:
            stats = self.tails.get(tail)
            if stats is None:
                return
            stats.execution_count += 1
            batch = stats.batches.setdefault(samples, BatchStatistics())
            batch.compute_infer.add(infer_ms)

    def proto(self, tails: Iterable[tuple[str, str]]) -> kpb.ModelStatisticsResponse:
        """ModelStatisticsResponse for ``tails`` (KServe's statistics extension)."""
        with self._lock:
            return kpb.ModelStatisticsResponse(
                model_stats=[self._model(tail, self.tails[tail]) for tail in tails]
            )

    @staticmethod
    def _model(tail: tuple[str, str], s: TailStatistics) -> kpb.ModelStatistics:
        return kpb.ModelStatistics(
            name=model_name(*tail),
            version=VERSION,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=kpb.InferStatistics(
                success=s.success.proto(),
                fail=s.fail.proto(),
                queue=s.queue.proto(),
                compute_input=s.compute_input.proto(),
                compute_infer=s.compute_infer.proto(),
                compute_output=s.compute_output.proto(),
            ),
            batch_stats=[
                kpb.InferBatchStatistics(
                    batch_size=size,
                    compute_input=b.compute_input.proto(),
                    compute_infer=b.compute_infer.proto(),
                    compute_output=b.compute_output.proto(),
                )
                for size, b in sorted(s.batches.items())
            ],
        )


# Triton's metric name -> (help, what of TailStatistics it reads); microseconds, as Triton
TRITON_COUNTERS = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    "nv_inference_request_failure": (
        "Number of failed inference requests, all batch sizes",
        lambda s: s.fail.count,
    ),
    "nv_inference_count": (
        "Number of inferences performed (samples; does not include cached requests)",
        lambda s: s.inference_count,
    ),
    "nv_inference_exec_count": (
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
}


class TritonCollector(Collector):
    """The statistics as Triton's Prometheus metrics, with its names (no ``_total``
    suffix), labelled ``model="<model>__<cut>"`` and ``version="1"``. The cumulative
    ones are typed ``unknown``: a counter's exposition names its family ``..._total``
    (OpenMetrics requires the suffix of a counter's samples), which would not be the
    samples' names, so promtool and the parsers refused the page."""

    def __init__(self, statistics: Statistics) -> None:
        self.statistics = statistics

    def collect(self) -> Iterator[Metric]:
        with self.statistics._lock:
            tails = {tail: _copy(s) for tail, s in self.statistics.tails.items()}
        for name, (text, read) in TRITON_COUNTERS.items():
            metric = Metric(name, text, "unknown")
            for tail, stats in tails.items():
                labels = {"model": model_name(*tail), "version": VERSION}
                metric.add_sample(name, labels, float(read(stats)))
            yield metric
        pending = Metric(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            "gauge",
        )
        for tail, stats in tails.items():
            labels = {"model": model_name(*tail), "version": VERSION}
            pending.add_sample("nv_inference_pending_request_count", labels, stats.pending)
        yield pending


def _copy(stats: TailStatistics) -> TailStatistics:
    return TailStatistics(
        success=Duration(stats.success.count, stats.success.ns),
        fail=Duration(stats.fail.count, stats.fail.ns),
        queue=Duration(stats.queue.count, stats.queue.ns),
        compute_input=Duration(stats.compute_input.count, stats.compute_input.ns),
        compute_infer=Duration(stats.compute_infer.count, stats.compute_infer.ns),
        compute_output=Duration(stats.compute_output.count, stats.compute_output.ns),
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        last_inference_ms=stats.last_inference_ms,
        pending=stats.pending,
    )
