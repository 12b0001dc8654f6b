"""What every protocol of the server shares: admission, the memory budget, the bearer
token, and one request's path through the tail (decode, batch or run, encode) with
its metrics.

runtime.cloud.server (splitinfer.v1) and runtime.cloud.kserve (KServe v2) are thin servicers
over a TailService; their answers differ only in the messages.

Two rules keep one request from hurting the others. Memory: every byte a call
makes the server hold (its request, decoded tensors, its answer until sent,
buffered stream chunks) is reserved in the one budget (runtime.cloud.budget) before
it is made and released when the call ends; what does not fit is refused at
once. The event loop: a request's work runs on the loop only when it is small
(INLINE_BYTES decoded, and a tail recently under INLINE_MS); anything larger
(decompression, conversion, the tail, the answer's serialization) runs in a
worker thread, after the request was admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from runtime.cloud.auth import check_bearer
from runtime.cloud.batching import Batcher, BatchOptions
from runtime.cloud.budget import Hold, MemoryBudget, Share
from runtime.cloud.metrics import Call, Metrics
from runtime.cloud.tails import HostLimits, TailHost, check_response_codec
from runtime.codec import Codec, CodecSpec, Encoded
from runtime.errors import (
    DeadlineError,
    OverloadedError,
    SplitInferError,
)
from runtime.status import status_of

# A tail that recently took less than this runs on the event loop itself: the hop
# to a worker thread costs more. Longer ones run in a thread, leaving the loop free.
INLINE_MS = 1.0
INLINE_BYTES = 64 * 1024  # work on more decoded bytes than this leaves the event loop
MAX_PENDING_STREAM_REQUESTS = 64  # per stream: answers unsent, requests incomplete
MAX_STREAM_RUNNING = 16  # per stream: requests being answered at once
MAX_STATUS_CHARS = 1024  # of a status message sent to a client
SENT_COPIES = 2  # an answer is held twice until sent: our bytes and gRPC's copy

T = TypeVar("T")
log = logging.getLogger("splitinfer.server")


class Admission:
    """Bounds the work: ``max_concurrent`` tails at once, ``max_queued`` waiting;
    beyond that a request is refused at once rather than queued without end. With
    batching, each running tail holds up to ``per_run`` requests. The requests of
    streams take at most half of that room, and wait for it rather than being
    refused (a stream's flow control then holds its client back): however many
    streams are open, single calls find room."""

    def __init__(self, limits: HostLimits, per_run: int = 1) -> None:
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.max_concurrent)
        self.running = limits.max_concurrent * per_run  # requests being computed at most
        self.capacity = self.running + limits.max_queued
        self.stream_share = max(1, self.capacity // 2)
        self.admitted = 0
        self.streaming = 0  # of the admitted, requests of streams
        self._released = asyncio.Event()

    @contextlib.asynccontextmanager
    async def admit(self, *, stream: bool = False) -> AsyncIterator[None]:
        """Count a request in, or refuse it when running and queued work is at the bound
        (a stream's request waits instead, while streams hold their share)."""
        if stream:
            while self.streaming >= self.stream_share or self.admitted >= self.capacity:
                self._released.clear()
                await self._released.wait()
            self.streaming += 1
        elif self.admitted >= self.capacity:
            raise OverloadedError(
                f"the server is at capacity ({self.running} running, "
                f"{self.limits.max_queued} queued): retry later"
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1
            if stream:
                self.streaming -= 1
            self._released.set()

    @contextlib.asynccontextmanager
    async def slot(
        self, context: grpc.aio.ServicerContext, *, stream: bool = False
    ) -> AsyncIterator[float]:
        """Wait for a worker; yields the time waited (ms)."""
        async with self.admit(stream=stream):
            start = time.perf_counter()
            async with self.slots:
                _check_deadline(context)  # it may have passed while queued
                yield (time.perf_counter() - start) * 1000


class Streams:
    """Bounds the streaming calls open at once: per server, and per connection (one
    client cannot take every stream the server allows)."""

    def __init__(self, limits: HostLimits) -> None:
        self.limits = limits
        self.open = 0
        self.by_peer: dict[str, int] = {}

    def enter(self, context: grpc.aio.ServicerContext) -> Callable[[], None]:
        """Count a stream in (OverloadedError beyond a bound); returns its release."""
        peer = context.peer() or ""
        if self.open >= self.limits.max_streams:
            raise OverloadedError(
                f"the server has {self.open} streams open, its limit: retry later"
            )
        if self.by_peer.get(peer, 0) >= self.limits.max_streams_per_connection:
            raise OverloadedError(
                f"this connection has {self.by_peer[peer]} streams open, the most one "
                "connection may: send more requests on each stream instead"
            )
        self.open += 1
        self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open -= 1
            left = self.by_peer[peer] - 1
            if left:
                self.by_peer[peer] = left
            else:
                del self.by_peer[peer]

        return release


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
    """Runs requests for a TailHost under admission and the memory budget, batching
    where the tail allows."""

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
        self.budget = MemoryBudget(host.limits.max_memory_bytes)
        self.streams = Streams(host.limits)
        self.batching = batching
        self.metrics = metrics or Metrics()
        self.metrics.host(
            (name, cut) for name, served in host.models.items() for cut in served.sessions
        )
        self.metrics.watch_budget(self.budget)
        self.token = None if token is None else token.encode()
        self.cost_ms: dict[tuple[str, str], float] = {}  # recent time per (model, cut)
        self.batchers: dict[tuple[str, str], Batcher | None] = {}

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """The bearer token of a gRPC call, when the server has one."""
        if self.token is not None:
            values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
            check_bearer(values, self.token)

    def begin(self, context: grpc.aio.ServicerContext, nbytes: int, what: str) -> Hold:
        """A hold for one call, released when the call ends (answered, refused or
        cancelled), holding ``nbytes`` already: the request as received."""
        hold = self.budget.hold()

        def ended(ctx: grpc.aio.ServicerContext[Any, Any]) -> None:
            hold.release()

        context.add_done_callback(ended)  # type: ignore[arg-type]  # the stub wants its own class
        hold.grow(nbytes, what)
        return hold

    def share(self) -> Share:
        """A new stream's part of the memory budget: together, streams hold at most half
        of it (beyond their one request each), leaving the rest to single calls."""
        limits = self.host.limits
        return Share(self.budget, limits.max_memory_bytes // (2 * limits.max_streams))

    def max_batch_size(self, model: str, cut: str) -> int:
        """The most samples one request of this tail may carry (0: the tail has no batch
        dimension): the ``max_batch_size`` the KServe model configuration advertises,
        and the most samples one ONNX Runtime call runs."""
        if self.host.batch_axis_symbol(model, cut) is None:
            return 0
        return self.batching.max_batch

    def check(self, model: str, cut: str, tensors: Sequence[Encoded]) -> None:
        """Everything that can be checked before anything is decoded or held."""
        self.host.check(model, cut, tensors, max_samples=self.max_batch_size(model, cut) or None)

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
                    lambda feeds: self._compute(model, cut, feeds, math.inf),
                    self.batching,
                    self.admission.slots,
                    lambda size, ms: self.metrics.batch(model, cut, size, ms),
                )
            )
        return self.batchers[key]

    async def offload(self, work: Callable[[], T], nbytes: int, *, stream: bool = False) -> T:
        """``work`` on the event loop when it touches at most INLINE_BYTES, else in a
        worker thread, counted in admission while it runs."""
        if nbytes <= INLINE_BYTES:
            return work()
        async with self.admission.admit(stream=stream):
            return await _off_loop(work, nbytes)

    async def stream(
        self, context: grpc.aio.ServicerContext, answers: Callable[[], AsyncGenerator[T, None]]
    ) -> AsyncGenerator[T, None]:
        """A streaming call's ``answers``, once the token is checked and the stream
        counted in (Streams); refused with its status otherwise."""
        try:
            self.authorize(context)
            release = self.streams.enter(context)
        except SplitInferError as exc:
            refuse(context, exc)
            return
        try:
            async with contextlib.aclosing(answers()) as stream:
                async for answer in stream:
                    yield answer
        finally:
            release()

    async def infer(
        self,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        response_codec: CodecSpec | None,
        context: grpc.aio.ServicerContext,
        hold: Hold,
        *,
        stream: bool = False,
        call: Call | None = None,
    ) -> Answer:
        """Check, then run one request: on its own, or stacked with others in a batch.
        ``hold`` grows by what decoding allocates and by the encoded outputs; ``stream``:
        a request of a stream (see Admission)."""
        _check_deadline(context)
        response_codec = check_response_codec(response_codec)
        self.check(model, cut, tensors)  # refuse before holding or queueing anything
        hold.grow(decoded_bytes(tensors), "the request's decoded tensors")
        size = tensor_bytes(tensors)
        batcher = self.batcher(model, cut)
        if batcher is None:
            answer = await self._alone(model, cut, tensors, response_codec, context, size, stream)
        else:
            answer = await self._batched(
                batcher, model, cut, tensors, response_codec, context, size, stream
            )
        hold.grow(sum(len(o.payload) for o in answer.outputs), "the answer's tensors")
        if call is not None:
            stacks = self.host.batch_axis_symbol(model, cut) is not None
            call.answered(
                _samples(tensors) if stacks else 1,
                answer.queue_ms,
                answer.decode_ms,
                answer.compute_ms,
                answer.encode_ms,
            )
        return answer

    async def _batched(
        self,
        batcher: Batcher,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        response_codec: CodecSpec,
        context: grpc.aio.ServicerContext,
        size: int,
        stream: bool,
    ) -> Answer:
        async with self.admission.admit(stream=stream):
            start = time.perf_counter()
            feeds = await _off_loop(lambda: self.host.decode(model, cut, tensors), size)
            decode_ms = (time.perf_counter() - start) * 1000
            _check_deadline(context)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            batched = await batcher.submit(feeds, deadline)
            del feeds
            start = time.perf_counter()
            encode = lambda: self.host.encode(model, cut, batched.outputs, response_codec)  # noqa: E731
            out = sum(v.nbytes for v in batched.outputs.values() if isinstance(v, np.ndarray))
            outputs = await _off_loop(encode, out)
            encode_ms = (time.perf_counter() - start) * 1000
        return Answer(outputs, batched.queue_ms, decode_ms, batched.compute_ms, encode_ms)

    async def _alone(
        self,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        response_codec: CodecSpec,
        context: grpc.aio.ServicerContext,
        size: int,
        stream: bool,
    ) -> Answer:
        async with self.admission.slot(context, stream=stream) as queued_ms:
            work = lambda: self.host.run(model, cut, tensors, response_codec)  # noqa: E731
            outputs, timing = await self._maybe_inline((model, cut), work, size)
        # a run of a tail without a batch dimension is one run of one request
        stacks = self.host.batch_axis_symbol(model, cut) is not None
        self.metrics.batch(model, cut, _samples(tensors) if stacks else 1, timing.compute_ms)
        return Answer(outputs, queued_ms, timing.decode_ms, timing.compute_ms, timing.encode_ms)

    async def _compute(
        self, model: str, cut: str, feeds: dict[str, np.ndarray], size: float
    ) -> dict[str, np.ndarray]:
        work = lambda: self.host.compute(model, cut, feeds)  # noqa: E731
        return await self._maybe_inline((model, cut), work, size)

    async def _maybe_inline(self, key: tuple[str, str], work: Callable[[], T], size: float) -> T:
        """Run ``work`` on the loop when the tail is cheap and its tensors small, else in a
        worker thread; the time it took updates the tail's recent cost."""
        start = time.perf_counter()
        if size <= INLINE_BYTES and self.cost_ms.get(key, math.inf) < INLINE_MS:
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


async def _off_loop(work: Callable[[], T], nbytes: int) -> T:
    """``work`` here when it touches at most INLINE_BYTES, else in a worker thread."""
    return work() if nbytes <= INLINE_BYTES else await asyncio.to_thread(work)


def tensor_bytes(tensors: Sequence[Encoded]) -> int:
    """The tensors' decoded size (shape x dtype, checked before this is asked)."""
    return sum(math.prod(t.shape) * np.dtype(t.dtype).itemsize for t in tensors)


def decoded_bytes(tensors: Sequence[Encoded]) -> int:
    """What decoding the tensors allocates: compressed ones are decoded into new
    arrays; raw ones are read in place, as views of the request's bytes."""
    return tensor_bytes([t for t in tensors if t.codec is not Codec.RAW])


def _samples(tensors: Sequence[Encoded]) -> int:
    shape = tensors[0].shape if tensors else ()
    return int(shape[0]) if shape else 1


def status_and_message(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """What a client is told of ``exc``: a splitinfer error's own status and message
    (at most MAX_STATUS_CHARS of it); for anything else INTERNAL, with the traceback
    in the server's log only."""
    if isinstance(exc, SplitInferError):
        message = exc.message
        if len(message) > MAX_STATUS_CHARS:
            message = message[:MAX_STATUS_CHARS] + "..."
        return status_of(exc), message
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"


def refuse(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with ``exc``'s status. Not ``context.abort``: the AbortError it
    raises is kept by the call's state and its traceback holds the handler's frames,
    a reference cycle that keeps the request's bytes until the garbage collector
    runs; a status set here is sent when the handler returns, and the bytes go then."""
    code, message = status_and_message(exc)
    context.set_code(code)
    context.set_details(message)


async def respond(
    context: grpc.aio.ServicerContext, work: Awaitable[Any], call: Call | None = None
) -> Any:
    """Run ``work``; a splitinfer error becomes its status, anything else INTERNAL (and
    the call returns None: gRPC sends no message with a status that is not OK).
    ``call``, when given, records the request's outcome in the metrics."""
    try:
        result = await work
    except asyncio.CancelledError:
        if call is not None:
            call.done(grpc.StatusCode.CANCELLED.name)
        raise
    except Exception as exc:
        refuse(context, exc)
        if call is not None:
            call.done(status_and_message(exc)[0].name)
        return None
    if call is not None:
        call.done(grpc.StatusCode.OK.name)
    return result


def same(data: bytes) -> bytes:
    return data


def answer_queue() -> asyncio.Queue[Any]:
    """Where a stream's answers (or their chunks) wait to be sent, each with the hold
    of its request. Bounded: when the client does not read them, the requests'
    tasks wait to put theirs, ``spawn`` stops taking new requests, and gRPC's flow
    control then stops the client's sending; the server holds at most
    MAX_PENDING_STREAM_REQUESTS running requests and as many messages waiting, all
    in the memory budget, not every answer of a stream nobody reads."""
    return asyncio.Queue(maxsize=MAX_PENDING_STREAM_REQUESTS)


async def spawn(
    tasks: set[asyncio.Task[None]],
    work: Coroutine[Any, Any, None],
    cancelled: Callable[[], None] | None = None,
) -> None:
    """Run ``work`` as one of a stream's tasks, once fewer than the bound are running.
    ``cancelled`` runs if the stream goes first: a task cancelled before it started
    never runs the cleanup of its own (its request's hold, say)."""
    try:
        while len(tasks) >= MAX_STREAM_RUNNING:
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.close()
        if cancelled is not None:
            cancelled()
        raise
    task = asyncio.create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    if cancelled is not None:
        task.add_done_callback(lambda done: cancelled() if done.cancelled() else None)


async def stream_answers(
    read: Callable[[], Awaitable[None]],
    answers: asyncio.Queue[Any],
    tasks: set[asyncio.Task[None]],
) -> AsyncGenerator[Any, None]:
    """A bidirectional stream's answers: ``read`` takes the requests in, starting a
    task (``spawn``) per request that puts its answer in ``answers`` (``answer_queue``)
    as a (message, hold) pair; the hold is released once the message is sent. The
    stream ends once every task has answered; when the caller goes, the tasks are
    cancelled and every hold still queued is released."""

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
        while (item := await answers.get()) is not None:
            message, hold = item
            try:
                yield message
            finally:  # sent, or the caller went while it was being sent
                if hold is not None:
                    hold.release()
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
        while not answers.empty():
            item = answers.get_nowait()
            if item is not None and item[1] is not None:
                item[1].release()
