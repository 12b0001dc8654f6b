"""What the device sees when the link dies: latency, detection, recovery, losses.

    .venv/bin/python -m bench.fallback [--quick] [--out bench/results/fallback.json]

A server (a separate process) behind the link emulator, the adaptive runtime
(200 ms deadline, device emulated 20x slower than this machine) sending
requests back to back. For each way a link dies (reset, silence): a split
phase, the link cut, then restored. Reported: p50/p99 latency of requests
issued while the link is down against local-only on the same device, time from
the cut to the first local answer (detection), time from the restore to the
first split answer (recovery), and requests lost (raised, or answered wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.processes import start_server, stop
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.linkem import LinkEmulator
from runtime.engine import SessionOptions, make_session, run_session
from tests.graphs import write_adaptive_artifacts

DEADLINE_MS = 200.0
SLOWDOWN = 20.0


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def local_only(directory: Path, feeds: dict[str, np.ndarray], count: int) -> list[float]:
    """Latency of running the whole model on the emulated device."""
    session = make_session(directory / "model.onnx", SessionOptions(optimize=False))
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run_session(session, feeds)
        elapsed = time.perf_counter() - start
        time.sleep(elapsed * (SLOWDOWN - 1))
        times.append((time.perf_counter() - start) * 1000)
    return times


def scenario(
    runtime: EdgeRuntime,
    link: LinkEmulator,
    mode: str,
    feeds: dict[str, np.ndarray],
    expected: np.ndarray,
    phase_s: float,
) -> dict[str, Any]:
    log: list[tuple[float, float, str]] = []  # (issued, latency ms, path)
    lost = 0
    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    for phase in ("before", "cut", "after"):
        if phase == "cut":
            link.cut(mode)
        elif phase == "after":
            link.restore()
        marks[phase] = time.perf_counter() - t0
        end = time.perf_counter() + phase_s
        while time.perf_counter() < end:
            issued = time.perf_counter() - t0
            try:
                result = runtime.infer(feeds)
                got = next(iter(result.outputs.values()))
                # the server runs ONNX Runtime's optimized graph: equal to rounding
                if not np.allclose(
                    got, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max())
                ):
                    lost += 1
                log.append((issued, result.timing["total_ms"], result.path))
            except Exception:
                lost += 1
    cut_at, restore_at = marks["cut"], marks["after"]
    down = [lat for issued, lat, _ in log if cut_at <= issued < restore_at]
    first_local = next(
        (i + lat / 1000 for i, lat, p in log if i >= cut_at and p != "split"), float("nan")
    )
    first_split = next(
        (i + lat / 1000 for i, lat, p in log if i >= restore_at and p == "split"), float("nan")
    )
    return {
        "mode": mode,
        "requests": len(log),
        "requests_while_down": len(down),
        "p50_down_ms": _percentile(down, 50),
        "p99_down_ms": _percentile(down, 99),
        "max_down_ms": max(down, default=float("nan")),
        "detect_ms": (first_local - cut_at) * 1000,
        "recover_ms": (first_split - restore_at) * 1000,
        "lost": lost,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fallback.json"))
    args = parser.parse_args()
    phase_s = 1.5 if args.quick else 4.0
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_adaptive_artifacts(directory)
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 16384)).astype(np.float32)}
        expected = next(
            iter(
                run_session(
                    make_session(directory / "model.onnx", SessionOptions(optimize=False)), feeds
                ).values()
            )
        )
        local = local_only(directory, feeds, 100 if args.quick else 300)
        server, port = start_server([directory])
        try:
            with LinkEmulator("127.0.0.1", port) as link:
                options = EdgeOptions(
                    deadline_ms=DEADLINE_MS,
                    slowdown=SLOWDOWN,
                    exact=True,
                    rtt_ms=1.0,
                    uplink_bps=1e9,
                )
                with EdgeRuntime(directory, SplitClient(link.address), options) as runtime:
                    runtime.client.wait_ready(10)
                    rows = [
                        scenario(runtime, link, mode, feeds, expected, phase_s)
                        for mode in ("reset", "hang")
                    ]
        finally:
            stop(server)
    results = {
        "machine": {
            "processor": platform.processor(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "command": "python -m bench.fallback" + (" --quick" if args.quick else ""),
        "deadline_ms": DEADLINE_MS,
        "slowdown": SLOWDOWN,
        "local_only": {"p50_ms": _percentile(local, 50), "p99_ms": _percentile(local, 99)},
        "scenarios": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"local-only: p50 {_percentile(local, 50):.1f} ms, p99 {_percentile(local, 99):.1f} ms")
    print("| link dies by | requests while down | p50 ms | p99 ms | max ms | detect ms |", end="")
    print(" back to split ms | lost |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['requests_while_down']} | {r['p50_down_ms']:.1f} | "
            f"{r['p99_down_ms']:.1f} | {r['max_down_ms']:.1f} | {r['detect_ms']:.0f} | "
            f"{r['recover_ms']:.0f} | {r['lost']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
