"""One memory budget for everything a request makes the server hold.

Request bytes, decoded tensors, buffered stream chunks, answers not yet sent and
probe payloads are all reserved here before they are made, and released when
the call that made them ends; what would not fit is refused at once
(RESOURCE_EXHAUSTED), saying how much was asked and how much is free. There is
no second, private counter beside this one: a stream, a probe and a tail run
all hold :class:`Hold` objects of the same budget.
"""

from __future__ import annotations

import threading

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
    """Bytes held against a budget by one call: grown as it takes memory, released
    once (``release`` again does nothing). A context manager releases on exit."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.nbytes = 0

    def grow(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` more; OverloadedError, holding nothing more, when they do not fit."""
        if nbytes < 0:
            raise ValueError(f"cannot hold a negative number of bytes ({nbytes})")
        if nbytes:
            self.budget._take(nbytes, what)
            self.nbytes += nbytes

    def shrink(self, nbytes: int) -> None:
        """Give back ``nbytes`` of what is held (what was freed before the call ends)."""
        nbytes = min(nbytes, self.nbytes)
        self.nbytes -= nbytes
        self.budget._give(nbytes)

    def release(self) -> None:
        self.shrink(self.nbytes)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _size(nbytes: int) -> str:
    if nbytes >= MiB:
        return f"{nbytes / MiB:.1f} MiB"
    return f"{nbytes} bytes"
