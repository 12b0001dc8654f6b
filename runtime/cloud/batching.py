"""Dynamic batching: concurrent requests for one tail run as one ONNX Runtime call.

A tail can batch when every input and output shares a symbolic leading dimension
(tails exported with a dynamic batch axis). Requests wait in the tail's queue;
a batch is formed when a worker is free and holds what is queued, up to
``max_batch`` samples of requests whose other dimensions agree. A request that
arrives with nothing else running is never held back; under load, a forming
batch waits at most ``max_delay_ms`` for more requests to join it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import DeadlineError

Feeds = dict[str, np.ndarray]
Compute = Callable[[Feeds], Awaitable[Feeds]]


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """``max_batch``: the most samples in one request and in one ONNX Runtime call (a
    tail's ``max_batch_size``); ``dynamic``: stack concurrent requests (with
    ``max_batch`` 1 there is nothing to stack); a batch waits at most
    ``max_delay_ms`` for more requests when the tail is busy."""

    max_batch: int = 32
    max_delay_ms: float = 2.0
    dynamic: bool = True

    @property
    def enabled(self) -> bool:
        return self.dynamic and self.max_batch > 1


@dataclass(frozen=True)
class Batched:
    """One request's share of a batch: its outputs, and the time (ms) it waited and
    the batch computed."""

    outputs: Feeds
    queue_ms: float
    compute_ms: float


@dataclass(eq=False)
class _Waiting:
    feeds: Feeds
    samples: int
    key: tuple[tuple[str, tuple[int, ...], str], ...]  # what must agree to stack
    deadline: float | None  # time.monotonic() after which the caller has gone
    enqueued: float = field(default_factory=time.perf_counter)
    future: asyncio.Future[Batched] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batcher:
    """One tail's queue. ``await submit(feeds)`` returns that request's share of the
    batch it ran in. ``compute`` runs one (stacked) call; ``slots`` bounds the calls
    running at once across tails: a batch forms once it has a slot."""

    def __init__(
        self,
        compute: Compute,
        options: BatchOptions,
        slots: asyncio.Semaphore,
        on_run: Callable[[int, float], None] | None = None,
    ) -> None:
        self.compute = compute
        self.on_run = on_run  # told each run's size in samples and its time (ms)
        self.options = options
        self.slots = slots
        self.queue: collections.deque[_Waiting] = collections.deque()
        self.running = 0  # batches computing now
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, feeds: Feeds, deadline: float | None = None) -> Batched:
        """``deadline``: the time.monotonic() after which running the request is pointless."""
        samples = _samples(feeds)
        key = tuple(
            sorted((name, value.shape[1:], value.dtype.str) for name, value in feeds.items())
        )
        waiting = _Waiting(feeds, samples, key, deadline)
        self.queue.append(waiting)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await waiting.future

    async def _work(self) -> None:
        while self.queue:
            await self.slots.acquire()
            try:
                # busy: let the batch fill, but never beyond the delay bound
                until = time.monotonic() + self.options.max_delay_ms / 1000
                while self.running and self._queued_samples() < self.options.max_batch:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.clear()
                    # asyncio.TimeoutError is not the builtin before Python 3.11
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), left)
                batch = self._take()
            except BaseException:
                self.slots.release()
                raise
            if not batch:
                self.slots.release()
                continue
            self.running += 1
            task = asyncio.create_task(self._run(batch))
            task.add_done_callback(self._finished)

    def _finished(self, _: object) -> None:
        self.running -= 1
        self.slots.release()
        self._wake.set()

    def _queued_samples(self) -> int:
        return sum(w.samples for w in self.queue)

    def _take(self) -> list[_Waiting]:
        """The oldest live request and every queued one that can stack with it."""
        now = time.monotonic()
        batch: list[_Waiting] = []
        samples = 0
        kept: collections.deque[_Waiting] = collections.deque()
        while self.queue:
            item = self.queue.popleft()
            if item.future.done():  # the caller gave up
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(
                    DeadlineError("the call's deadline passed before the tail could run")
                )
                continue
            fits = not batch or (
                item.key == batch[0].key and samples + item.samples <= self.options.max_batch
            )
            if fits:
                batch.append(item)
                samples += item.samples
            else:
                kept.append(item)
        self.queue = kept
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                results = [await self.compute(batch[0].feeds)]
            else:
                stacked = {
                    name: np.concatenate([w.feeds[name] for w in batch]) for name in batch[0].feeds
                }
                results = _unstack(await self.compute(stacked), [w.samples for w in batch])
            sizes = [sum(w.samples for w in batch)]
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # a request whose values break the tail (an index out of range...) must not
            # fail the others stacked with it: run each on its own
            results, sizes = [], []
            for waiting in batch:
                try:
                    results.append(await self.compute(waiting.feeds))
                except Exception as alone:
                    _fail(waiting, alone)
                    results.append({})
                    continue
                sizes.append(waiting.samples)
        compute_ms = (time.perf_counter() - started) * 1000
        if self.on_run is not None:
            for size in sizes:
                self.on_run(size, compute_ms / len(sizes))
        for waiting, part in zip(batch, results, strict=True):
            if not waiting.future.done():
                queue_ms = (started - waiting.enqueued) * 1000
                waiting.future.set_result(Batched(part, queue_ms, compute_ms))


def _unstack(results: Feeds, samples: list[int]) -> list[Feeds]:
    """Each request's share of a stacked run's outputs."""
    parts, offset = [], 0
    for count in samples:
        parts.append({k: v[offset : offset + count] for k, v in results.items()})
        offset += count
    return parts


def _fail(waiting: _Waiting, exc: BaseException) -> None:
    if not waiting.future.done():
        waiting.future.set_exception(exc)


def _samples(feeds: Feeds) -> int:
    return next(iter(feeds.values())).shape[0] if feeds else 0
