"""A link emulator: a TCP proxy on loopback that shapes, delays, cuts and restores.

Kernel netem is not available on these machines, so the link is emulated in
user space. Each direction of each connection is a pipe with a token-bucket
rate (bits per second), a one-way delay and jitter; the order of bytes is
kept. ``cut("reset")`` resets every connection and refuses new ones;
``cut("hang")`` goes silent: bytes are held, not forwarded, and new
connections are accepted but get nothing, as on a dead radio link, until
``restore()`` lets the held bytes through.

Python API (tests)::

    with LinkEmulator("127.0.0.1", server_port, up_bps=10e6, delay_ms=20) as link:
        client = SplitClient(link.address)
        link.set(up_bps=1e6)
        link.cut("hang")
        link.restore()
        link.carried  # {"up": bytes, "down": bytes} taken in so far

CLI (people)::

    python -m runtime.device.linkem --target 127.0.0.1:50051 --up 10mbit --delay 20ms
    # then type on stdin: "set up=2mbit delay=50ms", "cut reset", "cut hang", "restore"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from runtime.units import parse_address, parse_duration_ms, parse_rate

CHUNK = 16 * 1024


@dataclass(frozen=True)
class Shape:
    """One direction of the link."""

    rate_bps: float | None = None  # None: as fast as loopback
    delay_ms: float = 0.0
    jitter_ms: float = 0.0


@dataclass
class _State:
    up: Shape = field(default_factory=Shape)
    down: Shape = field(default_factory=Shape)
    mode: str = "up"  # "up", "reset" or "hang"
    restored: asyncio.Event | None = None


class LinkEmulator:
    """The proxy, on its own event loop thread; ``address`` is where clients connect."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        up_bps: float | None = None,
        down_bps: float | None = None,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.state = _State(
            Shape(up_bps, delay_ms, jitter_ms), Shape(down_bps, delay_ms, jitter_ms)
        )
        self.random = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.port = 0
        self.carried = {"up": 0, "down": 0}  # bytes each direction has taken in, so far

    # ---- life cycle

    def start(self) -> LinkEmulator:
        self.thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self.state.restored = asyncio.Event()
        self.state.restored.set()
        self.server = await asyncio.start_server(self._accept, *self.listen)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self._call(self._stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self._reset_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)  # type: ignore[arg-type]

    # ---- control

    def set(
        self,
        *,
        up_bps: float | str | None = "keep",
        down_bps: float | str | None = "keep",
        delay_ms: float | None = None,
        jitter_ms: float | None = None,
    ) -> None:
        """Change the shaping; arguments left out keep their value (None rate: unshaped)."""

        def change(shape: Shape, rate: float | str | None) -> Shape:
            shape = shape if rate == "keep" else replace(shape, rate_bps=rate)  # type: ignore[arg-type]
            if delay_ms is not None:
                shape = replace(shape, delay_ms=delay_ms)
            if jitter_ms is not None:
                shape = replace(shape, jitter_ms=jitter_ms)
            return shape

        def apply() -> None:
            self.state.up = change(self.state.up, up_bps)
            self.state.down = change(self.state.down, down_bps)

        self.loop.call_soon_threadsafe(apply)

    def cut(self, mode: str = "reset") -> None:
        """``"reset"``: every connection reset, new ones refused. ``"hang"``: silence."""
        if mode not in ("reset", "hang"):
            raise ValueError(f"cut mode must be 'reset' or 'hang', not {mode!r}")

        def apply() -> None:
            self.state.mode = mode
            assert self.state.restored is not None
            self.state.restored.clear()
            if mode == "reset":
                self._reset_all()

        self.loop.call_soon_threadsafe(apply)

    def restore(self) -> None:
        def apply() -> None:
            self.state.mode = "up"
            assert self.state.restored is not None
            self.state.restored.set()

        self.loop.call_soon_threadsafe(apply)

    # ---- the proxy

    def _reset_all(self) -> None:
        for pair in list(self.connections):
            for writer in pair:
                _reset(writer)
        self.connections.clear()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self.state.mode == "reset":
            _reset(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_writer)
            return
        pair = (client_writer, server_writer)
        self.connections.add(pair)
        up = asyncio.create_task(self._pipe(client_reader, server_writer, "up"))
        down = asyncio.create_task(self._pipe(server_reader, client_writer, "down"))
        with contextlib.suppress(asyncio.CancelledError):  # stop() cancels everything
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)  # a reset is expected
        self.connections.discard(pair)
        for writer in pair:
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._deliver(queue, writer))
        free_at = 0.0  # when the shaped wire is free again
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                self.carried[direction] += len(data)
                await self._wait_while_cut()
                shape = self.state.up if direction == "up" else self.state.down
                now = time.monotonic()
                start = max(now, free_at)
                free_at = start + (len(data) * 8 / shape.rate_bps if shape.rate_bps else 0.0)
                jitter = self.random.uniform(0, shape.jitter_ms) if shape.jitter_ms else 0.0
                await queue.put((free_at + (shape.delay_ms + jitter) / 1000, data))
                if free_at - now > 0.05:  # do not read far ahead of the wire
                    await asyncio.sleep(free_at - now - 0.05)
        finally:
            await queue.put((0.0, b""))
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        last = 0.0
        while True:
            at, data = await queue.get()
            if not data:
                return
            at = max(at, last)  # jitter never reorders bytes
            last = at
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._wait_while_cut()
            writer.write(data)
            await writer.drain()

    async def _wait_while_cut(self) -> None:
        while self.state.mode != "up":
            if self.state.mode == "reset":
                raise ConnectionResetError("link cut")
            assert self.state.restored is not None
            await self.state.restored.wait()  # held, as on a silent link


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a broken link does."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(Exception):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


USAGE = (
    "commands: set [up=RATE] [down=RATE] [delay=TIME] [jitter=TIME] (RATE: 2mbit or off) "
    "| cut [reset|hang] | restore | quit"
)


def _rate(text: str) -> float | None:
    return None if text in ("", "none", "off") else parse_rate(text)


def parser() -> argparse.ArgumentParser:
    """The emulator's options (``splitinfer linkem``)."""
    made = argparse.ArgumentParser(
        prog="splitinfer linkem",
        description="Emulate a link between a device and a server: a TCP proxy that shapes "
        "rate, delay and jitter and can cut and restore the link on command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(made)
    return made


def add_arguments(made: argparse.ArgumentParser) -> None:
    made.add_argument("--target", required=True, metavar="HOST:PORT", help="the server")
    made.add_argument(
        "--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="where devices connect"
    )
    made.add_argument("--up", default="off", help="uplink rate, e.g. 10mbit; off: unshaped")
    made.add_argument("--down", default="off", help="downlink rate, e.g. 50mbit; off: unshaped")
    made.add_argument("--delay", default="0ms", help="one-way delay, e.g. 20ms")
    made.add_argument("--jitter", default="0ms", help="extra random one-way delay, up to this")


def run(args: argparse.Namespace, commands: Iterable[str] = sys.stdin) -> int:
    """Start the emulator for parsed ``args`` and follow ``commands`` (lines) until
    ``quit`` or their end. Bad options raise ValueError (nothing started); a bad
    command is answered on stderr with the usage and the link goes on."""
    host, port = parse_address(args.target, "--target")
    listen_host, listen_port = parse_address(args.listen, "--listen")
    link = LinkEmulator(
        host,
        port,
        up_bps=_rate(args.up),
        down_bps=_rate(args.down),
        delay_ms=parse_duration_ms(args.delay),
        jitter_ms=parse_duration_ms(args.jitter),
        listen_host=listen_host,
        listen_port=listen_port,
    ).start()
    print(f"listening on {link.address}", flush=True)
    try:
        for line in commands:
            words = line.split()
            if words in (["quit"], ["exit"]):
                break
            if not words:
                continue
            try:
                _command(link, words)
            except ValueError as exc:
                print(f"error: {exc}; {USAGE}", file=sys.stderr, flush=True)
                continue
            print(f"ok {' '.join(words)}", flush=True)
    finally:
        link.stop()
    return 0


def _command(link: LinkEmulator, words: list[str]) -> None:
    """Carry out one command; ValueError, changing nothing, for one that is wrong."""
    verb, rest = words[0], words[1:]
    if verb == "cut":
        if len(rest) > 1 or (rest and rest[0] not in ("reset", "hang")):
            raise ValueError(f"cut takes reset or hang, not {' '.join(rest)!r}")
        link.cut(rest[0] if rest else "reset")
    elif verb == "restore" and not rest:
        link.restore()
    elif verb == "set" and rest:
        values = {}
        for word in rest:
            key, sep, value = word.partition("=")
            if not sep or key not in ("up", "down", "delay", "jitter"):
                raise ValueError(f"set takes up=, down=, delay= and jitter=, not {word!r}")
            values[key] = value
        up = _rate(values["up"]) if "up" in values else "keep"
        down = _rate(values["down"]) if "down" in values else "keep"
        delay = parse_duration_ms(values["delay"]) if "delay" in values else None
        jitter = parse_duration_ms(values["jitter"]) if "jitter" in values else None
        link.set(up_bps=up, down_bps=down, delay_ms=delay, jitter_ms=jitter)
    else:
        raise ValueError(f"unknown command {' '.join(words)!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m runtime.device.linkem``, as ``splitinfer linkem``: bad options are
    one line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"splitinfer linkem: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
