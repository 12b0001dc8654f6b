"""The adaptive edge runtime: per request, local or split at the cut predicted
fastest for the link as it is now; never a lost request.

For each request the runtime predicts the latency of every served cut,

    head (measured here) + encode + bytes / uplink + RTT + server (as it reports) + decode,

and of running the whole model here, from its own recent measurements and the
link estimator (runtime.device.link), and takes the least. It runs locally when that
is predicted faster, when no cut fits the deadline (unless a local run cannot
meet it either), or when the circuit breaker is open. A split that fails
(unreachable, reset, refused) or whose answer is late (three times its
prediction, or later than the deadline allows for a local run) completes
locally: path ``"fallback"``, counted, never an exception to the caller. A
background prober refreshes the link's estimates and closes the breaker as soon
as the server answers again. What a cut costs is learned only from requests
sent through it, so a cut not measured for ``explore_s`` is tried again with one
request (at most one in ten), waiting for its answer only so long that the
request costs at most twice the path it replaces: a server that was busy, or a
noisy first measurement, does not keep a cut out for good.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import load_manifest
from runtime.codec import Codec, CodecSpec, Encoded, encoded_size
from runtime.cost import Breakdown, CallCosts, Stages, finished_mj
from runtime.device.client import ClientTLS, Reply, SplitClient
from runtime.device.costs import (
    EWMA,
    CostTable,
    Key,
    Measured,
    PathCosts,
    Snapshot,
    plan_paths,
)
from runtime.device.edge import Result, encode_all
from runtime.device.link import CircuitBreaker, LinkEstimator
from runtime.device.options import EdgeOptions
from runtime.device.pipeline import Pipeline
from runtime.device.policy import Policy, Route
from runtime.device.prober import MIN_PROBE_BYTES, Prober
from runtime.engine import (
    CutRunner,
    SessionOptions,
    SlowDevice,
    check_feeds,
    example_feeds,
    make_session,
    run_session,
)
from runtime.errors import (
    DeadlineError,
    NotFoundError,
    OverloadedError,
    RemoteError,
    SplitInferError,
)
from runtime.power import PowerModel
from runtime.status import status_of

LOCAL = "\0local"  # the local run's key among the device's works
# refusals that say the device is set up wrong, not that the server is down
CONFIGURATION_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")
log = logging.getLogger("splitinfer.edge")

__all__ = ["EdgeOptions", "EdgeRuntime"]


@dataclass
class _Stats:
    paths: dict[str, int] = field(
        default_factory=lambda: {"local": 0, "split": 0, "fallback": 0, "dropped": 0}
    )
    failures: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    frames: int = 0  # taken in by submit and stream
    energy_mj: dict[str, float] = field(
        default_factory=lambda: {"local": 0.0, "split": 0.0, "fallback": 0.0}
    )
    dropped: int = 0  # realtime frames the pipeline had no room for
    sent_bytes: int = 0  # payload bytes sent up, every path
    explored: int = 0
    by_cut: dict[str, int] = field(default_factory=dict)


class EdgeRuntime:
    """Runs a model on the device, splitting it with a server when that pays off.

    A request's steps (``infer``): check its inputs, ask the policy where it goes
    (runtime.device.policy, from a snapshot of the cost table and the link
    estimate), split or run locally, and record what it cost. Thread-safe; use as
    a context manager or call close().
    """

    def __init__(
        self, directory: str | Path, client: SplitClient, options: EdgeOptions = EdgeOptions()
    ) -> None:
        self.directory = Path(directory)
        self.client = client
        self.options = options
        self.device = SlowDevice(options.slowdown)  # this machine, or a slower one emulated
        self.manifest = load_manifest(directory)
        sessions = SessionOptions(optimize=not options.exact)
        self.local = make_session(self.directory / self.manifest.full, sessions)
        plan = self.manifest.plan or {}
        # the plan's cuts by id: what it chose to serve, with their codecs and server time
        self.planned = {c["id"]: c for c in plan.get("cuts", [])}
        self.cuts: dict[str, CutRunner] = {
            cut.id: CutRunner(self.directory, self.manifest, cut, sessions, load_tail=False)
            for cut in self.manifest.cuts
            if cut.tail is not None
            and (not self.planned or cut.id in self.planned or options.cuts)
            and (options.cuts is None or cut.id in options.cuts)
        }
        unknown = set(options.cuts or ()) - {c.id for c in self.manifest.cuts}
        if unknown:
            known = ", ".join(c.id for c in self.manifest.cuts if c.tail is not None)
            raise ValueError(f"no cut {sorted(unknown)[0]!r} in {directory}; it has: {known}")
        self.codecs = self._codecs(options.codec)
        self.stream_codecs = self._stream_codecs()
        seed = plan.get("default", {}).get("link", {})
        self.link = LinkEstimator(
            uplink_bps=seed.get("uplink_bps", options.uplink_bps),
            rtt_ms=seed.get("rtt_ms", options.rtt_ms),
            downlink_bps=seed.get("downlink_bps", options.downlink_bps),
        )
        self.breaker = CircuitBreaker()
        settings = plan.get("constraints", {})
        self.call = CallCosts.from_json(settings.get("call"))  # the call's own costs, planned
        unary = [(c, s.label) for c, specs in self.codecs.items() for s in specs]
        workers = int(settings.get("cloud_workers", 1))
        self.policy = Policy(options, self.call, unary=unary, cloud_workers=workers)
        self.table = CostTable()
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._last_request = time.monotonic()
        self._inflight = 0  # splits waiting for the server: probes then measure a busy link
        self.unserved: dict[str, str] = {}  # cut: why the runtime stopped using it
        self.problems: dict[str, str] = {}  # configuration errors, by kind: why
        self._match_server()
        self._warm_up()
        self._pool: ThreadPoolExecutor | None = None
        self._pipeline: Pipeline | None = None
        self.prober = Prober(
            client,
            self.link,
            self.breaker,
            busy=self._busy,
            last_used=lambda: self._last_request,
            call_ms=self.call.call_ms,
            on_reconnect=self._reconnected,
            downlink=bool(self.cuts) and self._answers_matter(),
            interval_s=options.probe_interval_s,
            stale_s=options.stale_s,
        )
        # learn the link before the first request: a first call opens the connection
        # (its time is not the round trip's); the first payload only sizes the next two,
        # whose samples then outvote it in the estimator's median of three
        if self.cuts:
            with contextlib.suppress(SplitInferError):
                self.client.probe(0, 0, timeout=1.0)
        for _ in range(3 if self.cuts else 0):
            self.prober.probe(rate=True, downlink=False)
        if self.prober.downlink:
            self.prober.probe(rate=True, downlink=True)
        self.prober.start()

    @classmethod
    def from_dir(
        cls,
        directory: str | Path,
        target: str,
        *,
        token: str | None = None,
        tls: ClientTLS | None = None,
        **options: object,
    ) -> EdgeRuntime:
        """A runtime for an artifact directory and a server at ``target`` (HOST:PORT)."""
        return cls(directory, SplitClient(target, token=token, tls=tls), EdgeOptions(**options))  # type: ignore[arg-type]

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.prober.close()
        self.client.close()

    def _match_server(self) -> None:
        """Use only the cuts the server has, of this model: a deploy whose server lacks
        a cut of these artifacts (or has other artifacts) would answer NOT_FOUND for it
        on every request, and one whose tails were cut from another version of the
        model (retrained: same name, new weights) would answer wrong. A server that
        cannot be asked now is asked again when it answers (``_reconnected``), and
        taken at its word meanwhile: a NOT_FOUND answer removes that cut then."""
        try:
            served, max_request = self.client.served_cuts(self.manifest.model, timeout=2.0)
            known = sorted(set(self.cuts) & served)
            theirs = (
                self.client.model_sha256(self.manifest.model, known[0], timeout=2.0)
                if known
                else None
            )
        except SplitInferError as exc:
            self.failed(exc, breaker=False)
            log.info("could not ask %s which cuts it serves (%s)", self.client.target, exc)
            return
        if max_request:
            self.client.max_request_bytes = max_request
        for cut_id in sorted(set(self.cuts) - served):
            self.drop_cut(cut_id, f"the server at {self.client.target} does not serve it")
        if theirs is not None and theirs != self.manifest.sha256:
            why = (
                f"the server at {self.client.target} holds tails of another version of "
                f"{self.manifest.model} (sha256 {theirs[:12]}…, these artifacts "
                f"{self.manifest.sha256[:12]}…): its answers would not be this model's"
            )
            self._misconfigured("MODEL_MISMATCH", why)
            for cut_id in sorted(self.cuts):
                self.drop_cut(cut_id, why)

    def _reconnected(self) -> None:
        """The server answers again after it did not: ask it again what it serves (it
        may be another server now, or one that could not be asked before)."""
        self._match_server()

    def _misconfigured(self, kind: str, why: str) -> None:
        """A configuration error (a wrong token, another model's tails): logged once as
        such, and listed in stats()["problems"]."""
        with self._lock:
            if kind in self.problems:
                return
            self.problems[kind] = why
        log.error("configuration error (%s): %s", kind, why)

    def drop_cut(self, cut_id: str, why: str) -> None:
        """Stop using a cut (logged once, listed in stats()["unserved"])."""
        with self._lock:
            if cut_id in self.unserved:
                return
            self.unserved[cut_id] = why
            self.cuts.pop(cut_id, None)
        self.table.drop(cut_id)
        log.warning("cut %s of %s is not used: %s", cut_id, self.manifest.model, why)

    def _codecs(self, choice: str) -> dict[str, tuple[CodecSpec, ...]]:
        """The codecs each served cut may be sent with."""
        allowed = getattr(self.client, "codecs", None)  # None: any (splitinfer.v1)
        if choice != "auto":
            spec = CodecSpec.parse(choice)
            if allowed is not None and spec.label not in allowed:
                raise ValueError(f"codec {choice!r} cannot travel to this server ({allowed})")
            return {cut_id: (spec,) for cut_id in self.cuts}
        planned = {
            cut_id: [
                CodecSpec.parse(name)
                for name in c.get("codecs", [])
                if name != "-" and (allowed is None or name in allowed)
            ]
            for cut_id, c in self.planned.items()
        }
        return {
            cut_id: tuple(planned.get(cut_id) or [CodecSpec.parse("raw")]) for cut_id in self.cuts
        }

    def _stream_codecs(self) -> dict[str, tuple[CodecSpec, ...]]:
        """The codecs a stream's frames may go with: each cut's, and with ``delta`` its
        zstd as delta+zstd (never worse: a delta no smaller than a key frame is sent as
        one)."""
        chosen = {}
        for cut_id, specs in self.codecs.items():
            extra = [
                replace(spec, codec=Codec.DELTA_ZSTD)
                for spec in specs
                if self.options.delta and spec.codec is Codec.ZSTD
            ]
            chosen[cut_id] = tuple(dict.fromkeys([*specs, *extra]))
        return chosen

    # ---- measuring

    def _warm_up(self) -> None:
        """Seed the cost table: the plan's figures for every path, with the local model
        and every head measured here on example inputs: the fastest of three runs (a
        shared machine's noise only adds; the device calibrates each work on warm runs
        first; the requests' own times follow)."""
        feeds = example_feeds(self.manifest.inputs, batch=1)
        planned, local = plan_paths(self.manifest.plan)
        self.table.local = local or PathCosts(0.0)
        self.table.local.head_ms = self._fastest_ms(LOCAL, run_session, self.local, feeds)
        now = time.monotonic()
        for cut_id, runner in self.cuts.items():
            head_ms = self._fastest_ms(cut_id, runner.run_head, feeds)
            sent, _ = runner.run_head(feeds)
            server_ms = self.planned.get(cut_id, {}).get("cloud_ms", 0.0)  # the plan's estimate
            for spec in self.codecs[cut_id]:
                # encoding runs on the device too, under the key _split uses
                key = f"{cut_id}/{spec.label}"
                encode_ms = self._fastest_ms(key, encode_all, sent, spec)
                up = sum(encoded_size(t) for t in encode_all(sent, spec))
                costs = planned.get((cut_id, spec.label)) or PathCosts(
                    head_ms, server_ms=server_ms, tensors=tuple(sent)
                )
                costs.head_ms, costs.encode_ms, costs.up_bytes = head_ms, encode_ms, up
                costs.measured_at = now
                self.table.set((cut_id, spec.label), costs)
            plain = {spec.label for spec in self.codecs[cut_id]}
            for spec in self.stream_codecs.get(cut_id, ()):
                # a frame's delta is priced as its key frame (the plain codec) until measured
                base = replace(spec, codec=spec.codec.base).label
                if spec.codec.delta and base in plain:
                    self.table.copy_as((cut_id, spec.label), (cut_id, base))

    def _fastest_ms(self, key: str, run: Callable[..., Any], *args: Any) -> float:
        return min(self.device.run(key, run, *args)[1] for _ in range(3))

    def _answers_matter(self) -> bool:
        """Whether some path's answer is large enough for the downlink to be measured."""
        paths = self.table.snapshot().paths.values()
        return any(seen.parts.output_bytes >= MIN_PROBE_BYTES for seen in paths)

    def _busy(self) -> tuple[int, int]:
        with self._lock:
            return self._inflight, self._stats.calls

    # ---- choosing

    def forecast(self, key: Key) -> Breakdown | None:
        """One request through ``key`` priced on the link as estimated (None: the path
        is no longer used)."""
        seen = self.table.snapshot().paths.get(key)
        return None if seen is None else self.policy.price(seen.parts, self.link.estimate().link)

    def predict(self, cut_id: str, codec: str) -> float:
        """Predicted latency (ms) of one request through ``cut_id`` sent with ``codec``
        (a label), on the link as estimated."""
        priced = self.forecast((cut_id, codec))
        if priced is None:
            raise KeyError(f"no path {cut_id}:{codec}")
        return priced.total_ms

    def stages(self, key: Key) -> Stages | None:
        """A stream's stages through ``key`` on the link as estimated."""
        seen = self.table.snapshot().paths.get(key)
        return None if seen is None else self.policy.stages(seen.parts, self.link.estimate().link)

    def _snapshot(self) -> Snapshot:
        closed = self.breaker.snapshot()["state"] == CircuitBreaker.CLOSED
        return self.table.snapshot(breaker_closed=closed, link_down=self.breaker.blocked())

    def _choose(self) -> Route | None:
        """Where this request goes: a split, or None to run locally."""
        self.table.started()
        snapshot = self._snapshot()
        route = self.policy.choose(snapshot, self.link.estimate().link)
        if route is not None and route.trial:
            if not self.table.claim_trial(route.key, snapshot):
                return None if route.key not in snapshot.paths else self._choose_again(snapshot)
            with self._lock:
                self._stats.explored += 1
        return route

    def _choose_again(self, snapshot: Snapshot) -> Route | None:
        """Another request claimed the trial: this one takes the plain choice."""
        link = self.link.estimate().link
        no_trial = replace(snapshot, explored_at=snapshot.now)
        return self.policy.choose(no_trial, link)

    def stream_route(self) -> Route | None:
        """Where a stream's frames go now (the policy's choose_stream)."""
        return self.policy.choose_stream(self._snapshot(), self.link.estimate().link)

    # ---- energy

    def _spent(self, path: str, timing: dict[str, float], up: float = 0, down: float = 0) -> None:
        """The device energy a finished request spent, estimated from its measured times
        and the power model: its compute (head and encoding, or the local run), its radio
        for the bytes it sent and received at the estimated rates, idle for the rest of a
        split (and for a fallback, the split's time before the local run)."""
        power: PowerModel | None = self.options.power
        if power is None:
            return
        if path == "split":
            energy = finished_mj(
                power,
                self.link.estimate().link,
                total_ms=timing["total_ms"],
                compute_ms=timing["head_ms"] + timing["encode_ms"],
                sent_bytes=up,
                received_bytes=down,
            )
        else:
            energy = power.energy_mj(
                compute_ms=timing["local_ms"], idle_ms=timing.get("split_ms", 0.0)
            )
        timing["energy_mj"] = energy
        with self._lock:
            self._stats.energy_mj[path] += energy

    # ---- serving

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Result:
        """Every model output for ``feeds``; path "local", "split" or "fallback"."""
        start = time.perf_counter()
        feeds = check_feeds(self.manifest.inputs, feeds)  # the caller's mistake: raised
        self._last_request = time.monotonic()
        route = self._choose()
        if route is not None and self.breaker.allow():
            try:
                return self._split(route, feeds, start)
            except SplitInferError as exc:
                if isinstance(exc, NotFoundError):  # this cut is missing, not the server
                    self.drop_cut(route.key[0], f"the server answered {exc.message}")
                # a trial's wait is cut short on purpose: its lateness says nothing of
                # the server's health
                late_trial = route.trial and isinstance(exc, DeadlineError)
                breaker = not late_trial and not isinstance(exc, NotFoundError)
                self.failed(exc, breaker=breaker)
                return self.run_local(feeds, start, "fallback", route.key[0])
        return self.run_local(feeds, start, "local", "edge")

    def _split(self, route: Route, feeds: Mapping[str, np.ndarray], start: float) -> Result:
        cut_id, codec = route.key
        with self._lock:  # another caller may have dropped the cut since it was chosen
            runner = self.cuts.get(cut_id)
        priced = self.forecast(route.key)
        if runner is None or priced is None:
            raise NotFoundError(f"cut {cut_id} is no longer used: {self.unserved.get(cut_id)}")
        spec = next(s for s in self.codecs[cut_id] if s.label == codec)
        (sent, kept), head_ms = self.device.run(cut_id, runner.run_head, feeds)
        tensors, encode_ms = self.device.run(f"{cut_id}/{codec}", encode_all, sent, spec)
        remaining = self.options.deadline_ms - (time.perf_counter() - start) * 1000
        remote_ms = self.policy.remote_ms(priced)
        local_ms = self.table.local.head_ms
        with self._lock:
            self._stats.calls += 1
            self._inflight += 1
        waited = time.perf_counter()
        try:
            reply = self._call(cut_id, tensors, remaining, remote_ms, local_ms, route.wait_ms)
        except DeadlineError:
            # no answer yet: the call costs more than was waited. A penalty lifts the
            # prediction (and the next hedge) beyond it; it fades within seconds, so
            # that a link which was down, not slow, is tried again.
            self.table.penalize(route.key, (time.perf_counter() - waited) * 1000, remote_ms)
            raise
        finally:
            with self._lock:
                self._inflight -= 1
        up = sum(encoded_size(t) for t in tensors)
        with self._lock:
            self._stats.sent_bytes += up
        weight = 1.0 if route.trial else EWMA  # a trial's answer replaces the stale costs
        return self._finish(route.key, reply, kept, head_ms, encode_ms, up, start, weight)

    def finish_frame(
        self,
        key: Key,
        reply: Reply,
        kept: Mapping[str, np.ndarray],
        head_ms: float,
        encode_ms: float,
        up: int,
        start: float,
    ) -> Result:
        """A stream's frame's Result (its round trip includes the frames ahead of it:
        it says nothing of the link)."""
        if self.table.get(key) is None:
            raise NotFoundError(f"cut {key[0]} is no longer used")
        return self._finish(key, reply, kept, head_ms, encode_ms, up, start, observe=False)

    def _finish(
        self,
        key: Key,
        reply: Reply,
        kept: Mapping[str, np.ndarray],
        head_ms: float,
        encode_ms: float,
        up: int,
        start: float,
        weight: float = EWMA,
        *,
        observe: bool = True,
    ) -> Result:
        """A split's Result, its costs blended in (and with ``observe`` what the answer
        says of the link: not for a pipeline's frames, whose round trips include the
        frames ahead of them)."""
        cut_id, codec = key
        server = reply.server
        server_ms = server.queue_ms + server.decode_ms + server.compute_ms + server.encode_ms
        if not reply.server_known:  # a server that does not say (Triton): the estimate
            known = self.table.get(key)
            server_ms = known.server_ms if known is not None else 0.0
        down = sum(v.nbytes for v in reply.outputs.values())
        if observe:
            known = self.table.get(key)
            names = known.tensors if known is not None else ()
            link = self.link.estimate().link
            network_ms = reply.round_trip_ms - server_ms - self.call.ms(link, len(names))
            self.link.observe(
                up + self.call.request_bytes(names),
                max(network_ms, 0.0),
                down + self.call.answer_bytes,
            )
        self.breaker.success()
        measured = Measured(head_ms, encode_ms, server_ms, reply.decode_ms, up, down)
        self.table.observe(key, measured, weight)
        with self._lock:
            self._count("split", cut_id)
        outputs = {**kept, **reply.outputs}
        missing = [o.name for o in self.manifest.outputs if o.name not in outputs]
        if missing:
            raise RemoteError(f"the server's answer lacks output {missing[0]!r}", "INVALID")
        decode_ms = reply.decode_ms
        total_ms = (time.perf_counter() - start) * 1000
        timing = {
            "head_ms": head_ms,
            "encode_ms": encode_ms,
            # everything else the request took: the parts add up to the total
            "network_ms": max(0.0, total_ms - head_ms - encode_ms - server_ms - decode_ms),
            "server_ms": server_ms,
            "decode_ms": decode_ms,
            "total_ms": total_ms,
        }
        self._spent("split", timing, up, down)
        return Result(
            {o.name: outputs[o.name] for o in self.manifest.outputs}, "split", cut_id, timing, codec
        )

    def _call(
        self,
        cut_id: str,
        tensors: list[Encoded],
        remaining: float,
        remote_ms: float,
        local_ms: float,
        wait_ms: float,
    ) -> Reply:
        """The server's answer for ``tensors``, or DeadlineError once waiting longer does
        not pay (or after ``wait_ms``)."""
        pending = self.client.start_infer(
            self.manifest.model, cut_id, tensors, timeout=max(remaining, 1.0) / 1000
        )
        # Hedge: when the answer is late (three times its prediction, 20 ms at least) or
        # waiting longer would leave no time for a local run, stop and compute here.
        # When a local run cannot meet the deadline anyway, wait for the cloud up to it.
        hedge_ms = min(max(3 * remote_ms, 20.0), remaining - local_ms)
        if not self.options.hedge or remaining <= local_ms:
            hedge_ms = remaining
        hedge_ms = min(hedge_ms, wait_ms)
        try:
            return pending.result(timeout=max(hedge_ms, 0.0) / 1000)
        except TimeoutError:
            pending.cancel()
            raise DeadlineError(
                f"no answer within {hedge_ms:.0f} ms (predicted {remote_ms:.0f} ms): ran locally"
            ) from None

    def run_local(
        self, feeds: Mapping[str, np.ndarray], start: float, path: str, cut: str
    ) -> Result:
        """The whole model here: path "local", or "fallback" after a split through
        ``cut`` failed."""
        began = time.perf_counter()
        values, local_ms = self.device.run(LOCAL, run_session, self.local, feeds)
        self.table.observe_local(local_ms)
        with self._lock:
            self._count(path, cut if path == "fallback" else "edge")
        # before the local run: choosing, and for a fallback the split that failed
        timing = {"local_ms": local_ms, "total_ms": (time.perf_counter() - start) * 1000}
        timing["split_ms" if path == "fallback" else "choose_ms"] = (began - start) * 1000
        self._spent(path, timing)
        return Result(
            {o.name: values[o.name] for o in self.manifest.outputs},
            path,
            "edge" if path == "local" else cut,
            timing,
        )

    def _count(self, path: str, cut: str) -> None:
        self._stats.paths[path] += 1
        self._stats.by_cut[cut] = self._stats.by_cut.get(cut, 0) + 1

    def failed(self, exc: SplitInferError, *, breaker: bool = True) -> None:
        """A split that did not come back: counted by its status, and unless ``breaker``
        is False (or the server was only busy) a failure for the circuit breaker. A
        refusal of this device (UNAUTHENTICATED, PERMISSION_DENIED) is a configuration
        error, said once."""
        kind = exc.code if isinstance(exc, RemoteError) else status_of(exc).name
        with self._lock:
            self._stats.failures[kind] = self._stats.failures.get(kind, 0) + 1
        if kind in CONFIGURATION_ERRORS:
            self._misconfigured(
                kind, f"the server at {self.client.target} refuses this device: {exc.message}"
            )
        if breaker and not isinstance(exc, OverloadedError):  # busy is there: keep calling
            self.breaker.failure()

    # ---- streams

    def submit(self, feeds: Mapping[str, np.ndarray]) -> Future[Result]:
        """Start one frame through the runtime's pipeline and return at once (blocks
        while its window is full); the Future holds the frame's Result. Frames
        submitted one after another overlap: the head of the next runs while this one
        is on the wire or in the cloud."""
        with self._lock:
            if self._pipeline is None:
                self._pipeline = Pipeline(self)
            pipeline = self._pipeline
        return pipeline.submit(feeds)

    def stream(
        self, frames: Iterable[Mapping[str, np.ndarray]], *, realtime: bool = False
    ) -> Iterator[Result]:
        """One Result per frame, in the frames' order, the frames pipelined on one
        InferStream of their own (and its delta codec state). ``realtime``: frames
        are taken as fast as ``frames`` gives them; one that finds the pipeline full
        waits for the next free place and is dropped (path "dropped") if a newer frame
        comes first. Otherwise the pipeline takes the next frame once it has room, and
        no frame is dropped. A frame whose split fails is computed here."""
        pipeline = Pipeline(self)
        order: queue.SimpleQueue[Future[Result] | None] = queue.SimpleQueue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for feeds in frames:
                    if stop.is_set():
                        break
                    try:
                        future = pipeline.offer(feeds) if realtime else pipeline.submit(feeds)
                    except Exception as exc:
                        future = Future()
                        future.set_exception(exc)
                    order.put(future)
            except Exception as exc:
                failed: Future[Result] = Future()
                failed.set_exception(exc)
                order.put(failed)
            finally:
                order.put(None)

        producer = threading.Thread(target=produce, name="splitinfer-frames", daemon=True)
        producer.start()
        try:
            while (future := order.get()) is not None:
                yield future.result()
        finally:
            stop.set()
            pipeline.close()

    def device_pool(self) -> ThreadPoolExecutor:
        """The device: one thread runs the pipelines' heads, encodings and local runs."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="splitinfer-device")
            return self._pool

    def took_frame(self) -> None:
        """A stream's frame was taken in."""
        self._last_request = time.monotonic()
        with self._lock:
            self._stats.frames += 1

    def sent_frame(self, up_bytes: int) -> None:
        """A stream's frame went on the wire (the prober's samples meanwhile measure a
        queue)."""
        with self._lock:
            self._stats.calls += 1
            self._stats.sent_bytes += up_bytes

    def dropped_frame(self) -> None:
        with self._lock:
            self._stats.dropped += 1
            self._stats.paths["dropped"] += 1

    # ---- reporting

    def stats(self) -> dict[str, object]:
        """Requests per path and per cut, failures, calls made, breaker and link estimates."""
        estimate = self.link.estimate()
        link = estimate.link
        snapshot = self.table.snapshot()
        predicted = {
            f"{c}:{k}": self.policy.price(seen.parts, link).total_ms
            for (c, k), seen in snapshot.paths.items()
        }
        with self._lock:
            return {
                "paths": dict(self._stats.paths),
                "cuts": dict(self._stats.by_cut),
                "failures": dict(self._stats.failures),
                "calls": self._stats.calls,
                "explored": self._stats.explored,
                "frames": self._stats.frames,
                "energy_mj": dict(self._stats.energy_mj),
                "dropped": self._stats.dropped,
                "sent_bytes": self._stats.sent_bytes,
                "unserved": dict(self.unserved),
                "problems": dict(self.problems),
                "breaker": self.breaker.snapshot(),
                "link": {
                    "uplink_bps": estimate.uplink_bps,
                    "downlink_bps": link.downlink_rate,
                    "rtt_ms": estimate.rtt_ms,
                    "age_s": estimate.age_s,
                },
                "local_ms": self.table.local.head_ms,
                "predicted_ms": predicted,
            }
