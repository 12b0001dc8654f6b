"""Servers as separate processes, for benchmarks and tests: as a user starts them."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def start(command: Sequence[str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m ...command``; returns it and the address its first line names
    ("listening on HOST:PORT")."""
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"{' '.join(command)} did not start: {line!r}")
    return process, line.removeprefix("listening on ")


def start_server(
    directories: Sequence[Path], port: int = 0, options: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], int]:
    """``splitinfer serve DIR... --port PORT [options]``; returns the process and its port."""
    process, address = start(
        ["partitioner.cli", "serve", *map(str, directories), "--port", str(port), *options]
    )
    return process, int(address.rsplit(":", 1)[1])


def start_server_with_http(
    directories: Sequence[Path], options: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], int, int]:
    """As start_server, with KServe v2 REST on a free port too: the process, its gRPC
    port and its HTTP port (the "http on" line that follows the first)."""
    process, port = start_server(directories, options=[*options, "--http-port", "0"])
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("http on http://"):
        stop(process)
        raise RuntimeError(f"the server did not say where its HTTP endpoint is: {line!r}")
    return process, port, int(line.rsplit(":", 1)[1])


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Stop a process started here, by its pid, and reap it."""
    if process.poll() is None:
        os.kill(process.pid, sig)
    process.wait(timeout=30)


def machine() -> dict[str, object]:
    """What a benchmark's results say of the machine they were measured on."""
    return {
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
