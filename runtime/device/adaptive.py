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
from runtime.device.client import ClientTLS, Reply, SplitClient
from runtime.device.costs import EWMA, _blend, _CutCosts
from runtime.device.edge import Result, encode_all
from runtime.device.link import CircuitBreaker, LinkEstimator
from runtime.device.options import EdgeOptions
from runtime.device.pipeline import Pipeline
from runtime.device.policy import EXPLORE_EVERY, EXPLORE_RATIO, _Route
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

IDLE_AFTER_S = 5.0  # no throughput probes on a link the device has not used for this long
LOCAL = "\0local"  # the local run's key among the cuts' ids
log = logging.getLogger("splitinfer.edge")


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

    Thread-safe; use as a context manager or call close().
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
        # the plan's cuts by id: what it chose to serve, with their codecs and server time
        self.planned = {c["id"]: c for c in (self.manifest.plan or {}).get("cuts", [])}
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
        seed = (self.manifest.plan or {}).get("default", {}).get("link", {})
        self.link = LinkEstimator(
            uplink_bps=seed.get("uplink_bps", options.uplink_bps),
            rtt_ms=seed.get("rtt_ms", options.rtt_ms),
        )
        self.breaker = CircuitBreaker()
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._last_request = time.monotonic()
        self._inflight = 0  # splits waiting for the server: probes then measure a busy link
        self.unserved: dict[str, str] = {}  # cut: why the runtime stopped using it
        self.costs: dict[tuple[str, str], _CutCosts] = {}
        self._match_server()
        self.local_ms, self.costs = self._warm_up()
        for (cut_id, label), c in list(self.costs.items()):
            plain = CodecSpec.parse(label)
            for spec in self.stream_codecs.get(cut_id, ()):
                # a frame's delta is priced as its key frame (the plain codec) until measured
                if spec.codec.delta and replace(spec, codec=spec.codec.base) == plain:
                    self.costs.setdefault((cut_id, spec.label), replace(c))
        self._pool: ThreadPoolExecutor | None = None
        self._pipeline: Pipeline | None = None
        self._explored_at = time.monotonic()
        self._requests = self._explored_after = 0  # requests started; at the last trial
        # learn the link before the first request: a first call opens the connection
        # (its time is not the round trip's); the first payload only sizes the next two,
        # whose samples then outvote it in the estimator's median of three
        if self.cuts:
            with contextlib.suppress(SplitInferError):
                self.client.probe(0, 0, timeout=1.0)
        for _ in range(3 if self.cuts else 0):
            self._probe(rate=True)
        self._closing = threading.Event()
        self._prober = threading.Thread(target=self._probe_loop, daemon=True)
        self._prober.start()

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
        self._closing.set()
        self._prober.join(timeout=5)
        self.client.close()

    def _match_server(self) -> None:
        """Use only the cuts the server has: a deploy whose server lacks a cut of these
        artifacts (or has other artifacts) would answer NOT_FOUND for it on every
        request. A server that cannot be asked now is taken at its word later: a
        NOT_FOUND answer removes that cut then."""
        try:
            served, max_request = self.client.served_cuts(self.manifest.model, timeout=2.0)
        except SplitInferError as exc:
            log.info("could not ask %s which cuts it serves (%s)", self.client.target, exc)
            return
        if max_request:
            self.client.max_request_bytes = max_request
        for cut_id in sorted(set(self.cuts) - served):
            self._drop(cut_id, f"the server at {self.client.target} does not serve it")

    def _drop(self, cut_id: str, why: str) -> None:
        """Stop using a cut (logged once, listed in stats()["unserved"])."""
        with self._lock:
            if cut_id in self.unserved:
                return
            self.unserved[cut_id] = why
            self.cuts.pop(cut_id, None)
            for key in [k for k in self.costs if k[0] == cut_id]:
                del self.costs[key]
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

    def _warm_up(self) -> tuple[float, dict[tuple[str, str], _CutCosts]]:
        """Measure the local model and every head on example inputs: the fastest of
        three runs (a shared machine's noise only adds; the device calibrates each
        work on warm runs first; the requests' own times follow)."""
        feeds = example_feeds(self.manifest.inputs, batch=1)
        local_ms = self._fastest_ms(LOCAL, run_session, self.local, feeds)
        costs = {}
        for cut_id, runner in self.cuts.items():
            head_ms = self._fastest_ms(cut_id, runner.run_head, feeds)
            sent, _ = runner.run_head(feeds)
            server_ms = self.planned.get(cut_id, {}).get("cloud_ms", 0.0)  # the plan's estimate
            for spec in self.codecs[cut_id]:
                # encoding runs on the device too, under the key _split uses
                key = f"{cut_id}/{spec.label}"
                encode_ms = self._fastest_ms(key, encode_all, sent, spec)
                up = sum(encoded_size(t) for t in encode_all(sent, spec))
                costs[(cut_id, spec.label)] = _CutCosts(head_ms, encode_ms, server_ms, up_bytes=up)
        return local_ms, costs

    def _fastest_ms(self, key: str, run: Callable[..., Any], *args: Any) -> float:
        return min(self.device.run(key, run, *args)[1] for _ in range(3))

    # ---- choosing

    def predict(self, cut_id: str, codec: str) -> float:
        """Predicted latency (ms) of one request through ``cut_id`` sent with ``codec``
        (a label), on the link as estimated."""
        return self._predict(self.costs[(cut_id, codec)])

    def _predict(self, c: _CutCosts) -> float:
        link = self.link.estimate()
        transfer = (c.up_bytes + c.down_bytes) * 8 / link.uplink_bps * 1000
        remote = transfer + link.rtt_ms + c.server_ms + c.decode_ms + c.penalty()
        return c.head_ms + c.encode_ms + remote

    def _choose(self) -> _Route | None:
        """Where this request goes: a split, or None to run locally."""
        with self._lock:
            self._requests += 1
            options = {key: self.predict(*key) for key in self.costs if self._unary(key)}
            local = self.local_ms
        if not options:
            return None
        deadline = self.options.deadline_ms
        if self.options.objective == "energy":
            choice = self._least_energy(options, local)
            trial = self._trial(choice, options[choice] if choice else local)
            return trial or (_Route(choice) if choice else None)
        best = min(options, key=options.__getitem__)
        faster = options[best] * self.options.local_margin < local
        # past the deadline the cloud is given up: a split predicted to miss it ends up
        # local anyway, unless the local run cannot meet the deadline either
        choice = best if faster and (options[best] <= deadline or local > deadline) else None
        trial = self._trial(choice, options[choice] if choice else local)
        return trial or (_Route(choice) if choice else None)

    def _least_energy(
        self, options: dict[tuple[str, str], float], local_ms: float
    ) -> tuple[str, str] | None:
        """The split predicted to spend the least device energy among those that meet the
        deadline, or None when running here does (or nothing meets it: then the fastest)."""
        power = self.options.power
        assert power is not None
        deadline = self.options.deadline_ms
        with self._lock:
            energy = {k: self._energy(self.costs[k]) for k in options if k in self.costs}
        local_mj = power.compute_w * local_ms
        feasible = [k for k in energy if options[k] <= deadline]
        if local_ms <= deadline:
            best = min(feasible, key=energy.__getitem__, default=None)
            return best if best is not None and energy[best] < local_mj else None
        if feasible:
            return min(feasible, key=energy.__getitem__)
        fastest = min(options, key=options.__getitem__)
        return fastest if options[fastest] < local_ms else None

    def _energy(self, c: _CutCosts) -> float:
        """A split's predicted device energy (mJ) on the link as estimated."""
        power = self.options.power
        assert power is not None
        link = self.link.estimate()
        mbit = link.uplink_bps / 1e6
        return power.energy_mj(
            compute_ms=c.head_ms + c.encode_ms,
            transfer_ms=c.up_bytes * 8 / link.uplink_bps * 1000,
            return_ms=c.down_bytes * 8 / link.uplink_bps * 1000,
            idle_ms=link.rtt_ms + c.server_ms + c.decode_ms + c.penalty(),
            uplink_mbit=mbit,
            downlink_mbit=mbit,
        )

    def _spent(self, path: str, timing: dict[str, float], up: float = 0, down: float = 0) -> None:
        """The device energy a finished request spent, estimated from its measured times
        and the power model: its compute (head and encoding, or the local run), its radio
        for the bytes it sent and received at the estimated rate, idle for the rest of a
        split (and for a fallback, the split's time before the local run)."""
        power = self.options.power
        if power is None:
            return
        if path == "split":
            link = self.link.estimate()
            mbit = link.uplink_bps / 1e6
            energy = power.split_mj(
                total_ms=timing["total_ms"],
                compute_ms=timing["head_ms"] + timing["encode_ms"],
                transfer_ms=up * 8 / link.uplink_bps * 1000,
                return_ms=down * 8 / link.uplink_bps * 1000,
                uplink_mbit=mbit,
                downlink_mbit=mbit,
            )
        else:
            energy = power.energy_mj(
                compute_ms=timing["local_ms"], idle_ms=timing.get("split_ms", 0.0)
            )
        timing["energy_mj"] = energy
        with self._lock:
            self._stats.energy_mj[path] += energy

    def _unary(self, key: tuple[str, str]) -> bool:
        """Whether infer() sends with this (cut, codec): the stream-only delta codecs are
        left to streams (alone, a delta frame is a key frame)."""
        return any(spec.label == key[1] for spec in self.codecs.get(key[0], ()))

    def _stages(self, c: _CutCosts) -> dict[str, float]:
        """A pipeline's stages for one (cut, codec), in ms per frame."""
        link = self.link.estimate()
        return {
            "device_ms": c.head_ms + c.encode_ms,
            "uplink_ms": c.up_bytes * 8 / link.uplink_bps * 1000,
            "cloud_ms": c.server_ms,
            "downlink_ms": c.down_bytes * 8 / link.uplink_bps * 1000 + c.decode_ms,
        }

    def _choose_stream(self) -> _Route | None:
        """Where a stream's frames go: the (cut, codec) with the most frames per second
        (``stream_objective="latency"``: the least latency), or None to run locally
        when that is better or the best split cannot meet the deadline."""
        with self._lock:
            keys = [
                k for k in self.costs if k[1] in {s.label for s in self.stream_codecs.get(k[0], ())}
            ]
            latency = {k: self._predict(self.costs[k]) for k in keys}
            period = {k: max(self._stages(self.costs[k]).values()) for k in keys}
            local = self.local_ms
        if not keys:
            return None
        score = period if self.options.stream_objective == "throughput" else latency
        # a delta codec priced as its key frame (not yet measured) is no worse: it goes first
        best = min(keys, key=lambda k: (score[k], latency[k], not k[1].startswith("delta+")))
        better = score[best] * self.options.local_margin < local
        if better and (
            latency[best] <= self.options.deadline_ms or local > self.options.deadline_ms
        ):
            return _Route(best)
        return None

    def _trial(self, choice: tuple[str, str] | None, taken_ms: float) -> _Route | None:
        """A trial of the cut seen least recently, when its costs are older than
        explore_s, no trial ran for as long and EXPLORE_EVERY requests: its wait is
        what keeps the request within EXPLORE_RATIO times the path taken (its head,
        its wait, then a local run). Its server may have been busy and be idle now, or
        its first measurement noisy: what it costs is learned only by sending to it."""
        now = time.monotonic()
        stale = now - self.options.explore_s
        with self._lock:
            due = self._explored_at < stale
            if not due or self._requests - self._explored_after < EXPLORE_EVERY:
                return None  # the common case, decided before anything else is read
            if self.breaker.snapshot()["state"] != CircuitBreaker.CLOSED:
                return None  # the prober finds out first whether the server is back
            link = self.link.estimate()
            waits = {}
            for key, c in self.costs.items():
                if key == choice or c.last_seen() > stale or not self._unary(key):
                    continue
                wait_ms = EXPLORE_RATIO * taken_ms - self.local_ms - c.head_ms - c.encode_ms
                transfer_ms = c.up_bytes * 8 / link.uplink_bps * 1000
                if wait_ms > transfer_ms + link.rtt_ms:  # it could answer in time
                    waits[key] = wait_ms
            if not waits:
                return None
            key = min(waits, key=lambda k: self.costs[k].last_seen())
            self.costs[key].tried_at = now
            self._explored_at, self._explored_after = now, self._requests
            self._stats.explored += 1
        return _Route(key, waits[key], trial=True)

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
                    self._drop(route.key[0], f"the server answered {exc.message}")
                # a trial's wait is cut short on purpose: its lateness says nothing of
                # the server's health
                late_trial = route.trial and isinstance(exc, DeadlineError)
                breaker = not late_trial and not isinstance(exc, NotFoundError)
                self._failed(exc, breaker=breaker)
                return self._run_local(feeds, start, "fallback", route.key[0])
        return self._run_local(feeds, start, "local", "edge")

    def _split(self, route: _Route, feeds: Mapping[str, np.ndarray], start: float) -> Result:
        cut_id, codec = route.key
        with self._lock:  # another caller may have dropped the cut since it was chosen
            runner, c = self.cuts.get(cut_id), self.costs.get(route.key)
        if runner is None or c is None:
            raise NotFoundError(f"cut {cut_id} is no longer used: {self.unserved.get(cut_id)}")
        spec = next(s for s in self.codecs[cut_id] if s.label == codec)
        (sent, kept), head_ms = self.device.run(cut_id, runner.run_head, feeds)
        tensors, encode_ms = self.device.run(f"{cut_id}/{codec}", encode_all, sent, spec)
        remaining = self.options.deadline_ms - (time.perf_counter() - start) * 1000
        with self._lock:
            self._stats.calls += 1
            self._inflight += 1
            remote_ms = self._predict(c) - c.head_ms
            local_ms = self.local_ms
        waited = time.perf_counter()
        try:
            reply = self._call(cut_id, tensors, remaining, remote_ms, local_ms, route.wait_ms)
        except DeadlineError:
            # no answer yet: the call costs more than was waited. A penalty lifts the
            # prediction (and the next hedge) beyond it; it fades within seconds, so
            # that a link which was down, not slow, is tried again.
            late_ms = (time.perf_counter() - waited) * 1000
            with self._lock:
                c.penalty_ms = c.penalty() + max(1.5 * late_ms - remote_ms, 0.0)
                c.penalty_at = time.monotonic()
            raise
        finally:
            with self._lock:
                self._inflight -= 1
        up = sum(encoded_size(t) for t in tensors)
        with self._lock:
            self._stats.sent_bytes += up
        weight = 1.0 if route.trial else EWMA  # a trial's answer replaces the stale costs
        return self._finish(route.key, c, reply, kept, head_ms, encode_ms, up, start, weight)

    def _finish(
        self,
        key: tuple[str, str],
        c: _CutCosts,
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
            with self._lock:
                server_ms = c.server_ms
        network_ms = max(reply.round_trip_ms - server_ms, 0.0)
        down = sum(v.nbytes for v in reply.outputs.values())
        if observe:
            self.link.observe(up + down, network_ms)
        self.breaker.success()
        with self._lock:
            c.head_ms, c.encode_ms = (
                _blend(c.head_ms, head_ms, weight),
                _blend(c.encode_ms, encode_ms, weight),
            )
            c.server_ms, c.decode_ms = (
                _blend(c.server_ms, server_ms, weight),
                _blend(c.decode_ms, reply.decode_ms, weight),
            )
            c.up_bytes, c.down_bytes = _blend(c.up_bytes, up, weight), down
            c.penalty_ms = 0.0  # an answer: what it cost is known
            c.measured_at = time.monotonic()
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

    def _run_local(
        self, feeds: Mapping[str, np.ndarray], start: float, path: str, cut: str
    ) -> Result:
        began = time.perf_counter()
        values, local_ms = self.device.run(LOCAL, run_session, self.local, feeds)
        with self._lock:
            self.local_ms = _blend(self.local_ms, local_ms)
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

    def _failed(self, exc: SplitInferError, *, breaker: bool = True) -> None:
        kind = getattr(exc, "code", None) or type(exc).__name__
        with self._lock:
            self._stats.failures[kind] = self._stats.failures.get(kind, 0) + 1
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

    def _device_pool(self) -> ThreadPoolExecutor:
        """The device: one thread runs the pipelines' heads, encodings and local runs."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="splitinfer-device")
            return self._pool

    def _stream_result(self, frame: Any, reply: Reply) -> Result:
        key = (frame.cut, frame.codec)
        with self._lock:
            c = self.costs.get(key)
        if c is None:
            raise NotFoundError(f"cut {frame.cut} is no longer used")
        return self._finish(
            key, c, reply, frame.kept, frame.head_ms, frame.encode_ms, frame.up_bytes,
            frame.start, observe=False,
        )  # fmt: skip

    def _count_dropped(self) -> None:
        with self._lock:
            self._stats.dropped += 1
            self._stats.paths["dropped"] += 1

    # ---- probing

    def _probe_loop(self) -> None:
        while not self._closing.wait(self.options.probe_interval_s):
            open_ = self.breaker.snapshot()["state"] != CircuitBreaker.CLOSED
            link = self.link.estimate()
            busy = time.monotonic() - self._last_request < IDLE_AFTER_S
            # small splits say nothing of the throughput, large ones little of the RTT
            rate = open_ or (busy and link.rate_age_s > self.options.stale_s)
            rtt = open_ or (busy and link.rtt_age_s > self.options.stale_s)
            if rate or rtt:
                self._probe(rate=rate)  # an empty call always: the round trip

    def _probe(self, *, rate: bool) -> None:
        """An empty call (is the server there, and the round trip), then for ``rate`` one
        with a payload and another empty one: what the payload adds to the faster empty
        call (the first may have opened the connection) is the throughput's. A sample
        taken while a split was on the link is dropped: it measured the split's queue."""
        with self._lock:
            if self._inflight:  # a split is on the link: its answer will tell
                return
        if not self.breaker.allow():
            return
        link = self.link.estimate()
        timeout = max(0.5, 4 * link.rtt_ms / 1000)
        try:
            empty_ms = self._quiet_probe(0, timeout)
        except SplitInferError:
            self.breaker.failure()
            return
        trusted = self.breaker.snapshot()["state"] == CircuitBreaker.CLOSED
        self.breaker.success()
        # about 30 ms of the link as estimated (16-256 KiB), when that takes < 0.2 s; after
        # a failure the estimate is not to be trusted: the smallest payload
        size = int(min(max(link.uplink_bps * 0.03 / 8, 16 * 1024), 256 * 1024))
        if not trusted:
            size = 16 * 1024
        payloads = getattr(self.client, "probes_payload", True)
        if empty_ms is not None and rate and payloads and size * 8 / link.uplink_bps < 0.2:
            with contextlib.suppress(SplitInferError):  # slow, not gone: no breaker
                loaded_ms = self._quiet_probe(size, 4 * timeout)
                again_ms = self._quiet_probe(0, timeout)
                if loaded_ms is not None and again_ms is not None:
                    empty_ms = min(empty_ms, again_ms)
                    if loaded_ms > empty_ms:  # else too small a payload to tell
                        self.link.observe_transfer(size, loaded_ms - empty_ms)
        if empty_ms is not None:
            self.link.observe_rtt(empty_ms)

    def _quiet_probe(self, size: int, timeout: float) -> float | None:
        """The network time (ms) of a probe carrying ``size`` bytes up (sent in any
        case), or None when a split was on the link meanwhile."""
        with self._lock:
            busy, calls = self._inflight, self._stats.calls
        round_trip, server_ms = self.client.probe(size, 0, timeout=timeout)
        with self._lock:
            if busy or self._inflight or self._stats.calls != calls:
                return None
        return round_trip - server_ms

    # ---- reporting

    def stats(self) -> dict[str, object]:
        """Requests per path and per cut, failures, calls made, breaker and link estimates."""
        link = self.link.estimate()
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
                "breaker": self.breaker.snapshot(),
                "link": {"uplink_bps": link.uplink_bps, "rtt_ms": link.rtt_ms, "age_s": link.age_s},
                "local_ms": self.local_ms,
                "predicted_ms": {f"{c}:{k}": self.predict(c, k) for c, k in self.costs},
            }
