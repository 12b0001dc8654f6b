"""What every protocol of the server shares: admission, the bearer token, and one
request's path through the tail (decode, batch or run, encode) with its metrics.

runtime.server (splitinfer.v1) and runtime.kserve (KServe v2) are thin servicers
over a TailService; their answers differ only in the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from runtime.batching import Batcher, BatchOptions
from runtime.codec import Codec, CodecSpec, Encoded
from runtime.errors import DeadlineError, OverloadedError, SplitInferError, UnauthenticatedError
from runtime.metrics import Call, Metrics
from runtime.status import status_of
from runtime.tails import HostLimits, TailHost, check_response_codec

# A tail that recently took less than this runs on the event loop itself: the hop
# to a worker thread costs more. Longer ones run in a thread, leaving the loop free.
INLINE_MS = 1.0
INLINE_DECODE_BYTES = 64 * 1024  # compressed payloads beyond this decode in a thread
MAX_PENDING_STREAM_REQUESTS = 64  # per stream: requests running, or answers unsent

T = TypeVar("T")
log = logging.getLogger("splitinfer.server")


class Admission:
    """Bounds the work: ``max_concurrent`` tails at once, ``max_queued`` waiting;
    beyond that a request is refused at once rather than queued without end. With
    batching, each running tail holds up to ``per_run`` requests."""

    def __init__(self, limits: HostLimits, per_run: int = 1) -> None:
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.max_concurrent)
        self.running = limits.max_concurrent * per_run  # requests being computed at most
        self.admitted = 0

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Count a request in, or refuse it when running and queued work is at the bound."""
        if self.admitted >= self.running + self.limits.max_queued:
            raise OverloadedError(
                f"the server is at capacity ({self.running} running, "
                f"{self.limits.max_queued} queued): retry later"
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self, context: grpc.aio.ServicerContext) -> AsyncIterator[float]:
        """Wait for a worker; yields the time waited (ms)."""
        async with self.admit():
            start = time.perf_counter()
            async with self.slots:
                _check_deadline(context)  # it may have passed while queued
                yield (time.perf_counter() - start) * 1000


def _check_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineError("the call's deadline passed before the tail could run")


@dataclass(frozen=True)
class Answer:
    """A request's encoded outputs and where its time went (ms)."""

    outputs: list[Encoded]
    queue_ms: float
    decode_ms: float
    compute_ms: float
    encode_ms: float


class TailService:
    """Runs requests for a TailHost under admission, batching where the tail allows."""

    def __init__(
        self,
        host: TailHost,
        *,
        token: str | None = None,
        batching: BatchOptions = BatchOptions(),
        metrics: Metrics | None = None,
    ) -> None:
        self.host = host
        batches = batching.enabled and not host.exact
        self.admission = Admission(host.limits, batching.max_batch if batches else 1)
        self.batching = batching
        self.metrics = metrics or Metrics()
        self.metrics.known = {
            (name, cut) for name, served in host.models.items() for cut in served.sessions
        }
        self.token = None if token is None else b"Bearer " + token.encode()
        self.cost_ms: dict[tuple[str, str], float] = {}  # recent time per (model, cut)
        self.batchers: dict[tuple[str, str], Batcher | None] = {}

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """The bearer token, when the server has one (constant-time comparison)."""
        if self.token is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization", "")
        given = value.encode() if isinstance(value, str) else bytes(value)
        if not hmac.compare_digest(given, self.token):
            raise UnauthenticatedError("missing or wrong bearer token")

    def batcher(self, model: str, cut: str) -> Batcher | None:
        """The tail's batcher; None when batching is off or the tail cannot stack."""
        key = (model, cut)
        if key not in self.batchers:
            # Stacking requests changes ONNX Runtime's kernels (a GEMV becomes a GEMM) and
            # with them the last bits of the answers: an exact host never batches.
            stacks = self.batching.enabled and not self.host.exact
            symbol = self.host.batch_axis_symbol(model, cut) if stacks else None
            self.batchers[key] = (
                None
                if symbol is None
                else Batcher(
                    lambda feeds: self._compute(model, cut, feeds),
                    self.batching,
                    self.admission.slots,
                    lambda size: self.metrics.batch(model, cut, size),
                )
            )
        return self.batchers[key]

    async def infer(
        self,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        response_codec: CodecSpec | None,
        context: grpc.aio.ServicerContext,
    ) -> Answer:
        """Check, then run one request: on its own, or stacked with others in a batch."""
        _check_deadline(context)
        response_codec = check_response_codec(response_codec)
        self.host.check(model, cut, tensors)  # refuse before queueing
        batcher = self.batcher(model, cut)
        if batcher is None:
            return await self._alone(model, cut, tensors, response_codec, context)
        async with self.admission.admit():
            start = time.perf_counter()
            if any(t.codec != Codec.RAW and len(t.payload) > INLINE_DECODE_BYTES for t in tensors):
                feeds = await asyncio.to_thread(self.host.decode, model, cut, tensors)
            else:
                feeds = self.host.decode(model, cut, tensors)
            decode_ms = (time.perf_counter() - start) * 1000
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            batched = await batcher.submit(feeds, deadline)
            start = time.perf_counter()
            outputs = self.host.encode(model, cut, batched.outputs, response_codec)
            encode_ms = (time.perf_counter() - start) * 1000
        return Answer(outputs, batched.queue_ms, decode_ms, batched.compute_ms, encode_ms)

    async def _alone(
        self,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        response_codec: CodecSpec,
        context: grpc.aio.ServicerContext,
    ) -> Answer:
        async with self.admission.slot(context) as queued_ms:
            work = lambda: self.host.run(model, cut, tensors, response_codec)  # noqa: E731
            outputs, timing = await self._maybe_inline((model, cut), work)
        # a run of a tail without a batch dimension is one run of one request
        stacks = self.host.batch_axis_symbol(model, cut) is not None
        self.metrics.batch(model, cut, _samples(tensors) if stacks else 1)
        return Answer(outputs, queued_ms, timing.decode_ms, timing.compute_ms, timing.encode_ms)

    async def _compute(
        self, model: str, cut: str, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return await self._maybe_inline((model, cut), lambda: self.host.compute(model, cut, feeds))

    async def _maybe_inline(self, key: tuple[str, str], work: Callable[[], T]) -> T:
        """Run ``work`` on the loop when the tail is cheap, else in a worker thread; the
        time it took updates the tail's recent cost."""
        start = time.perf_counter()
        if self.cost_ms.get(key, math.inf) < INLINE_MS:
            result = work()  # cheaper than the hop to a worker thread
        else:
            running = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                result = await asyncio.shield(running)
            except asyncio.CancelledError:
                # the caller gave up, but the tail runs on: keep its slot until it ends
                await asyncio.wait({running})
                raise
        spent = (time.perf_counter() - start) * 1000
        self.cost_ms[key] = 0.8 * self.cost_ms.get(key, spent) + 0.2 * spent
        return result


def _samples(tensors: Sequence[Encoded]) -> int:
    shape = tensors[0].shape if tensors else ()
    return int(shape[0]) if shape else 1


def status_and_message(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """What a client is told of ``exc``: a splitinfer error's own status and message;
    for anything else INTERNAL, with the traceback in the server's log only."""
    if isinstance(exc, SplitInferError):
        return status_of(exc), exc.message
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"


async def checked(check: Callable[..., None], *args: Any) -> None:
    """``check(*args)`` as an awaitable, for ``respond``: a stream's checks before it
    starts answer with their status like a unary call's."""
    check(*args)


async def respond(
    context: grpc.aio.ServicerContext, work: Awaitable[Any], call: Call | None = None
) -> Any:
    """Run ``work``; turn a splitinfer error into its status, anything else into INTERNAL.
    ``call``, when given, records the request's outcome in the metrics."""
    try:
        result = await work
    except asyncio.CancelledError:
        if call is not None:
            call.done(grpc.StatusCode.CANCELLED.name)
        raise
    except Exception as exc:
        code, message = status_and_message(exc)
    else:
        if call is not None:
            call.done(grpc.StatusCode.OK.name)
        return result
    if call is not None:
        call.done(code.name)
    await context.abort(code, message)


@dataclass(frozen=True)
class Malformed:
    """What request bytes that do not parse become, so that the RPC can refuse them."""

    message: str


def same(data: bytes) -> bytes:
    return data


def lenient(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Malformed(f"the request is not a valid {message_class.__name__}: {text}")

    return parse


def answer_queue() -> asyncio.Queue[Any]:
    """Where a stream's answers (or their chunks) wait to be sent. Bounded: when the
    client does not read them, the requests' tasks wait to put theirs, ``spawn``
    stops taking new requests, and gRPC's flow control then stops the client's
    sending; the server holds at most MAX_PENDING_STREAM_REQUESTS running requests
    and as many messages waiting, not every answer of a stream nobody reads."""
    return asyncio.Queue(maxsize=MAX_PENDING_STREAM_REQUESTS)


async def spawn(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` as one of a stream's tasks, once fewer than the bound are running."""
    while len(tasks) >= MAX_PENDING_STREAM_REQUESTS:
        await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
    task = asyncio.create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def stream_answers(
    read: Callable[[], Awaitable[None]],
    answers: asyncio.Queue[Any],
    tasks: set[asyncio.Task[None]],
) -> AsyncIterator[Any]:
    """A bidirectional stream's answers: ``read`` takes the requests in, starting a
    task (``spawn``) per request that puts its answer in ``answers`` (``answer_queue``).
    The stream ends once every task has answered; when the caller goes, the tasks are
    cancelled."""

    async def reading() -> None:
        # cancelled when the caller goes: then nothing is put (the queue may be full)
        try:
            await read()
        except Exception:  # the requests could not be read on: answer those taken in
            log.debug("a stream's requests ended with an error", exc_info=True)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await answers.put(None)

    reader = asyncio.create_task(reading())
    try:
        while (answer := await answers.get()) is not None:
            yield answer
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
