"""One memory budget for everything a request makes the server hold.

Request bytes, decoded tensors, buffered stream chunks, answers not yet sent and
probe payloads are all reserved here before they are made, and released when
the call that made them ends; what would not fit is refused at once
(RESOURCE_EXHAUSTED), saying how much was asked and how much is free. There is
no second, private counter beside this one: a stream, a probe and a tail run
all hold :class:`Hold` objects of the same budget.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import threading
from typing import Any

from runtime.errors import OverloadedError

MiB = 1 << 20


class MemoryBudget:
    """``limit`` bytes, shared by every call of one server. Thread-safe."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a memory budget must be positive, not {limit}")
        self.limit = limit
        self.used = 0
        self.refused = 0  # reservations refused so far
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return self.limit - self.used

    def hold(self) -> Hold:
        """An empty hold, grown as the call takes memory and released once at its end."""
        return Hold(self)

    def reserve(self, nbytes: int, what: str) -> Hold:
        """A hold of ``nbytes`` for ``what`` (says what in the refusal)."""
        hold = Hold(self)
        hold.grow(nbytes, what)
        return hold

    def _take(self, nbytes: int, what: str) -> None:
        with self._lock:
            if nbytes > self.limit - self.used:
                self.refused += 1
                free = self.limit - self.used
                raise OverloadedError(
                    f"no memory for {what}: it needs {_size(nbytes)}, the server has "
                    f"{_size(free)} free of its {_size(self.limit)} budget (--max-memory); "
                    "retry later"
                )
            self.used += nbytes

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


class Hold:
    """Bytes held against a budget by one call (and against its stream's Share, when
    it has one): grown as it takes memory, released once (``release`` again does
    nothing). A context manager releases on exit."""

    def __init__(self, budget: MemoryBudget, share: Share | None = None) -> None:
        self.budget = budget
        self.share = share
        self.nbytes = 0

    def grow(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` more; OverloadedError, holding nothing more, when they do not fit."""
        if nbytes < 0:
            raise ValueError(f"cannot hold a negative number of bytes ({nbytes})")
        if nbytes:
            self.budget._take(nbytes, what)
            self.nbytes += nbytes
            if self.share is not None:
                self.share.used += nbytes

    def shrink(self, nbytes: int) -> None:
        """Give back ``nbytes`` of what is held (what was freed before the call ends)."""
        nbytes = min(nbytes, self.nbytes)
        self.nbytes -= nbytes
        self.budget._give(nbytes)
        if self.share is not None and nbytes:
            self.share.used -= nbytes
            self.share.freed.set()

    def release(self) -> None:
        self.shrink(self.nbytes)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Share:
    """One stream's part of a budget: its requests hold at most ``cap`` bytes at once
    (one request of any size always may). A request that would take more waits
    until the stream's earlier ones are answered and sent: a stream that is not
    read stops being read itself (gRPC's flow control holds its client back)
    instead of taking the memory single calls need. Used on the event loop."""

    def __init__(self, budget: MemoryBudget, cap: int) -> None:
        self.budget = budget
        self.cap = cap
        self.used = 0
        self.freed = asyncio.Event()

    async def reserve(self, nbytes: int, what: str) -> Hold:
        """A hold of ``nbytes``, once the stream has room; OverloadedError at once when
        the budget itself has none."""
        while self.used and self.used + nbytes > self.cap:
            self.freed.clear()
            await self.freed.wait()
        hold = Hold(self.budget, self)
        hold.grow(nbytes, what)
        return hold


def _size(nbytes: int) -> str:
    if nbytes >= MiB:
        return f"{nbytes / MiB:.1f} MiB"
    return f"{nbytes} bytes"


class Trimmer:
    """Gives freed memory back to the operating system. glibc's malloc keeps what a
    request freed in its heaps (gRPC reads a message in thousands of small slices,
    which never come from mmap), so after a burst of large requests the resident
    set stays high although nothing holds the bytes; ``malloc_trim`` returns the
    free pages. ``due`` when the resident set is ``slack`` bytes above what it was
    at the start (a trim costs milliseconds, in a worker thread, once a second at
    most). Does nothing off glibc."""

    def __init__(self, slack: int = 32 * MiB) -> None:
        self.slack = slack
        self._trim = _malloc_trim()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.floor = self.rss()

    def rss(self) -> int:
        """This process's resident set (bytes), 0 where /proc is not there."""
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def due(self) -> bool:
        if self._trim is None:
            return False
        return self.rss() > self.floor + self.slack

    def trim(self) -> None:
        """Trim now (blocking: call it from a worker thread; ctypes lets the GIL go)."""
        if self._trim is not None:
            self._trim(0)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_arenas(count: int = 2) -> None:
    """Let glibc's malloc keep at most ``count`` heaps (arenas). By default it makes
    up to eight per core, one per thread that allocates at once; memory a request
    freed in one of them is fragmented among the others' and mostly stays. Two
    heaps cost a little contention between the event loop and the worker threads,
    and keep what a burst of large requests leaves behind to a fraction."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, count)


def _libc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> Any:
    libc = _libc()
    return None if libc is None else getattr(libc, "malloc_trim", None)


async def keep_trimmed(trimmer: Trimmer, every_s: float = 1.0) -> None:
    """Run forever (cancel to stop): trim whenever the resident set grew."""
    while True:
        await asyncio.sleep(every_s)
        if trimmer.due():
            await asyncio.to_thread(trimmer.trim)
