"""Pipelined split inference for streams of frames (a camera, a microphone).

While frame n is on the wire and frame n-1 in the cloud, the head of frame n+1
runs on the device. A :class:`Pipeline` belongs to one EdgeRuntime and keeps:

* the device: one worker thread runs every head, encoding and local run, in
  the order they were asked for (a device computes one thing at a time);
* one InferStream (runtime.device.client.FrameStream) for the frames' requests,
  and the delta codecs' state for it (runtime.codec.DeltaEncoder);
* a window of frames in flight. Little's law sizes it: to keep the slowest
  stage busy, ``latency / bottleneck`` frames must be under way, plus the one
  being prepared (2 to 16). A full window holds the producer back, or in
  ``realtime`` mode makes the newest frame wait in a one-frame slot, whose
  previous occupant is dropped (path ``"dropped"``).

Every frame ends in a Result: split, or computed locally (path ``"fallback"``)
when its split fails or its answer is late (three times its predicted latency);
a late answer or a broken stream abandons the stream, and the frames on it fall
back; the next frame opens a new stream and starts with key frames.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from runtime.artifacts import Manifest
from runtime.codec import CodecSpec, DeltaEncoder, Encoded, encoded_size
from runtime.cost import Breakdown, Stages
from runtime.device.client import FrameStream, Reply, SplitClient
from runtime.device.costs import Key
from runtime.device.edge import Result, encode_all
from runtime.device.link import CircuitBreaker
from runtime.device.options import EdgeOptions
from runtime.device.policy import Route
from runtime.engine import CutRunner, SlowDevice, check_feeds
from runtime.errors import DeadlineError, NotFoundError, SplitInferError

MIN_WINDOW, MAX_WINDOW = 2, 16
LATE_FACTOR = 3.0  # an answer later than this many times its prediction is given up
MIN_LATE_MS = 50.0
ROUTE_EVERY_S = 0.5  # how often the pipeline's cut is chosen again
log = logging.getLogger("splitinfer.edge")


class Host(Protocol):
    """What a pipeline uses of its runtime (runtime.device.adaptive.EdgeRuntime): its
    public parts, and nothing of its insides."""

    manifest: Manifest
    options: EdgeOptions
    client: SplitClient
    device: SlowDevice
    breaker: CircuitBreaker
    cuts: dict[str, CutRunner]

    def stream_route(self) -> Route | None: ...
    def forecast(self, key: Key) -> Breakdown | None: ...
    def stages(self, key: Key) -> Stages | None: ...
    def device_pool(self) -> ThreadPoolExecutor: ...
    def took_frame(self) -> None: ...
    def sent_frame(self, up_bytes: int) -> None: ...
    def dropped_frame(self) -> None: ...
    def drop_cut(self, cut_id: str, why: str) -> None: ...
    def failed(self, exc: SplitInferError, *, breaker: bool = True) -> None: ...
    def run_local(
        self, feeds: Mapping[str, np.ndarray], start: float, path: str, cut: str
    ) -> Result: ...
    def finish_frame(
        self,
        key: Key,
        reply: Reply,
        kept: Mapping[str, np.ndarray],
        head_ms: float,
        encode_ms: float,
        up: int,
        start: float,
    ) -> Result: ...


@dataclass
class _Frame:
    """One frame in flight."""

    feeds: Mapping[str, np.ndarray]
    future: Future[Result]
    start: float
    cut: str = "edge"
    codec: str = "-"
    kept: Mapping[str, np.ndarray] | None = None
    head_ms: float = 0.0
    encode_ms: float = 0.0
    up_bytes: int = 0
    stream: FrameStream | None = None
    settled: bool = False
    timer: threading.Timer | None = None


class Pipeline:
    """Frames of one stream through one runtime; see the module's description."""

    def __init__(self, runtime: Host) -> None:
        self.rt = runtime
        self.encoder = DeltaEncoder(key_every=runtime.options.key_every)
        self.stream: FrameStream | None = None
        self._cond = threading.Condition()
        self._inflight = 0
        self._waiting: _Frame | None = None  # realtime: the newest frame, not yet started
        self._closed = False
        self._route: Route | None = None
        self._route_at = -math.inf
        self.window = MIN_WINDOW

    # ---- taking frames in

    def submit(self, feeds: Mapping[str, np.ndarray]) -> Future[Result]:
        """Start a frame, once the window has room (blocks until then)."""
        frame = self._frame(feeds)
        with self._cond:
            while self._inflight >= self.window and not self._closed:
                self._cond.wait()
            self._inflight += 1
        self._start(frame)
        return frame.future

    def offer(self, feeds: Mapping[str, np.ndarray]) -> Future[Result]:
        """Start a frame now when the window has room; otherwise it waits for the next
        free place, replacing (dropping) a frame that was waiting already."""
        frame = self._frame(feeds)
        dropped = None
        with self._cond:
            if self._inflight < self.window or self._closed:
                self._inflight += 1
            else:
                dropped, self._waiting = self._waiting, frame
                frame = None  # type: ignore[assignment]
        if dropped is not None:
            self.rt.dropped_frame()
            timing = {"total_ms": (time.perf_counter() - dropped.start) * 1000}
            dropped.future.set_result(Result({}, "dropped", "-", timing))
        if frame is not None:
            self._start(frame)
            return frame.future
        assert self._waiting is not None
        return self._waiting.future

    def _frame(self, feeds: Mapping[str, np.ndarray]) -> _Frame:
        checked = check_feeds(self.rt.manifest.inputs, feeds)  # the caller's mistake: raised
        self.rt.took_frame()
        return _Frame(checked, Future(), time.perf_counter())

    def _start(self, frame: _Frame) -> None:
        self.rt.device_pool().submit(self._prepare, frame)

    def _leave(self) -> None:
        """A frame ended: its place goes to the waiting frame, if any."""
        with self._cond:
            waiting, self._waiting = self._waiting, None
            if waiting is None:
                self._inflight -= 1
                self._cond.notify()
        if waiting is not None:
            self._start(waiting)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = self._waiting, None
            self._cond.notify_all()
        if waiting is not None:
            self.rt.dropped_frame()
            waiting.future.set_result(Result({}, "dropped", "-", {"total_ms": 0.0}))
        if self.stream is not None:
            self.stream.close()

    # ---- on the device

    def _prepare(self, frame: _Frame) -> None:
        """Head and encoding on the device, then the frame goes on the stream; locally
        when no split is predicted to pay or the circuit breaker is open."""
        try:
            route = self._choose()
            runner = self.rt.cuts.get(route.key[0]) if route else None
            if route is None or runner is None or not self.rt.breaker.allow():
                self._local(frame, "local", "edge")
                return
            frame.cut, frame.codec = route.key
            stream = self._open()
            spec = CodecSpec.parse(frame.codec)
            (sent, frame.kept), frame.head_ms = self.rt.device.run(
                frame.cut, runner.run_head, frame.feeds
            )
            tensors, frame.encode_ms = self.rt.device.run(
                f"{frame.cut}/{frame.codec}",
                self._encode,
                frame.cut,
                sent,
                spec,
                repeatable=not spec.codec.delta,  # a delta encoder keeps each frame
            )
            frame.up_bytes = sum(encoded_size(t) for t in tensors)
            frame.stream = stream
            self.rt.sent_frame(frame.up_bytes)
            priced = self.rt.forecast(route.key)
            late_ms = LATE_FACTOR * (priced.total_ms if priced else MIN_LATE_MS)
            frame.timer = threading.Timer(max(late_ms, MIN_LATE_MS) / 1000, self._late, (frame,))
            frame.timer.daemon = True
            frame.timer.start()
            stream.send(self.rt.manifest.model, frame.cut, tensors).add_done_callback(
                lambda answer: self._answered(frame, answer)
            )
        except Exception as exc:
            if frame.settled or frame.future.done():
                return
            if not isinstance(exc, SplitInferError):
                log.warning("a split of a stream's frame failed: %r", exc)
                exc = SplitInferError(str(exc))
            self._failed(frame, exc)

    def _encode(self, cut: str, sent: Mapping[str, np.ndarray], spec: CodecSpec) -> list[Encoded]:
        if not spec.codec.delta:
            return encode_all(sent, spec)
        model = self.rt.manifest.model
        return [
            self.encoder.encode(value, spec, slot=f"{model}/{cut}/{name}", name=name)
            for name, value in sent.items()
        ]

    def _open(self) -> FrameStream:
        """The pipeline's stream, a new one after the last broke (references reset)."""
        if self.stream is None or self.stream.broken is not None:
            if self.stream is not None:
                self.stream.close()
            self.encoder.reset()
            self.stream = FrameStream(self.rt.client)
        return self.stream

    def _choose(self) -> Route | None:
        now = time.monotonic()
        if now - self._route_at > ROUTE_EVERY_S:
            self._route, self._route_at = self.rt.stream_route(), now
            self.window = self._window(self._route)
            with self._cond:
                self._cond.notify_all()
        return self._route

    def _window(self, route: Route | None) -> int:
        """Frames in flight that keep the slowest stage busy: latency / bottleneck, plus
        the frame being prepared (Little's law)."""
        if route is None:
            return MIN_WINDOW
        priced, stages = self.rt.forecast(route.key), self.rt.stages(route.key)
        if priced is None or stages is None:
            return MIN_WINDOW
        latency = priced.total_ms
        bottleneck = max(stages.bottleneck_ms, 1e-3)
        return int(min(max(math.ceil(latency / bottleneck) + 1, MIN_WINDOW), MAX_WINDOW))

    # ---- answers

    def _answered(self, frame: _Frame, answer: Future[Reply]) -> None:
        if not self._settle(frame):
            return
        error = answer.exception()
        if error is not None:
            self._failed(frame, error if isinstance(error, SplitInferError) else
                         SplitInferError(str(error)))  # fmt: skip
            return
        try:
            result = self.rt.finish_frame(
                (frame.cut, frame.codec),
                answer.result(),
                frame.kept or {},
                frame.head_ms,
                frame.encode_ms,
                frame.up_bytes,
                frame.start,
            )
        except SplitInferError as exc:
            self._failed(frame, exc, settled=True)
            return
        frame.future.set_result(result)
        self._leave()

    def _late(self, frame: _Frame) -> None:
        """No answer in time: the stream is given up, and with it every frame on it
        (each falls back); the next frame opens a new one."""
        if frame.future.done() or frame.settled:
            return
        stream = frame.stream
        if stream is not None:
            stream.close(DeadlineError("a frame's answer was late: the stream was given up"))

    def _settle(self, frame: _Frame) -> bool:
        with self._cond:
            if frame.settled:
                return False
            frame.settled = True
        if frame.timer is not None:
            frame.timer.cancel()
        return True

    def _failed(self, frame: _Frame, exc: SplitInferError, *, settled: bool = False) -> None:
        """A split that did not come back: counted, then computed on the device."""
        if not settled:
            self._settle(frame)
        if isinstance(exc, NotFoundError):
            self.rt.drop_cut(frame.cut, f"the server answered {exc.message}")
        self.rt.failed(exc, breaker=not isinstance(exc, NotFoundError))
        self.encoder.reset()  # the server forgets a frame's references when it fails
        self._route_at = -math.inf  # and the cut is chosen again
        self.rt.device_pool().submit(self._local, frame, "fallback", frame.cut)

    def _local(self, frame: _Frame, path: str, cut: str) -> None:
        try:
            result = self.rt.run_local(frame.feeds, frame.start, path, cut)
        except BaseException as exc:
            frame.future.set_exception(exc)
        else:
            frame.future.set_result(result)
        self._leave()
