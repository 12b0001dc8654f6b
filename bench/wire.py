"""Runtime overhead on an unshaped loopback link, against a bare gRPC echo.

    .venv/bin/python -m bench.wire [--quick] [--out bench/results/wire.json]

For cut tensors of 64 KB, 1 MB and 4 MB (raw codec), the median end-to-end
time of StaticSplit.infer minus the head's and the tail's compute, beside the
median round trip of a bare gRPC echo of the same payload, measured in the
same run; both servers are separate processes on 127.0.0.1. Then requests per
second of one splitinfer server under 32 concurrent clients (64 KB tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper

from bench.echo import LIMIT, METHOD
from bench.processes import start, start_server, stop
from partitioner import ModelGraph, cut_from_tensors, write_artifacts
from runtime.device.client import SplitClient
from runtime.device.edge import StaticSplit

SIZES = {"64KB": 64 << 10, "1MB": 1 << 20, "4MB": 4 << 20}
CLIENTS = 32


def _model(name: str, width: int) -> onnx.ModelProto:
    """x -> Relu (head) -> Neg (tail): the cut tensor is ``width`` float32 values."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def overhead(
    directory: Path, target: str, echo_target: str, size: int, repeats: int
) -> dict[str, Any]:
    feeds = {"x": np.random.default_rng(0).standard_normal((1, size // 4)).astype(np.float32)}
    payload = bytes(size)
    channel = grpc.insecure_channel(
        echo_target,
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
        ],
    )
    echo = channel.unary_unary(
        METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    split_ms, echo_ms = [], []
    with SplitClient(target) as client:
        split = StaticSplit(directory, client, cut="c1")
        for index in range(repeats + 3):
            # interleaved, so that both see the same machine
            result = split.infer(feeds)
            start = time.perf_counter()
            echo(payload)
            elapsed = (time.perf_counter() - start) * 1000
            if index >= 3:
                t = result.timing
                split_ms.append(t["total_ms"] - t["head_ms"] - t["tail_ms"])
                echo_ms.append(elapsed)
    channel.close()
    median_split, median_echo = statistics.median(split_ms), statistics.median(echo_ms)
    return {
        "bytes": size,
        "overhead_ms": median_split,
        "echo_ms": median_echo,
        "ratio": median_split / median_echo,
    }


def throughput(directory: Path, target: str, seconds: float) -> dict[str, Any]:
    feeds = {
        "x": np.random.default_rng(1).standard_normal((1, SIZES["64KB"] // 4)).astype(np.float32)
    }
    done = [0] * CLIENTS
    errors = [0] * CLIENTS
    stop = threading.Event()

    def worker(index: int) -> None:
        with SplitClient(target) as client:
            split = StaticSplit(directory, client, cut="c1")
            while not stop.is_set():
                try:
                    split.infer(feeds)
                    done[index] += 1
                except Exception:
                    errors[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # connect and warm up
    before, start = sum(done), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = sum(done), time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()
    return {
        "clients": CLIENTS,
        "seconds": elapsed,
        "requests_per_s": (after - before) / elapsed,
        "errors": sum(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/wire.json"))
    args = parser.parse_args()
    repeats, seconds = (15, 3.0) if args.quick else (41, 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        directories = {}
        for label, size in SIZES.items():
            graph = ModelGraph.load(_model(f"echo{label}", size // 4))
            directories[label] = Path(tmp) / label
            write_artifacts(
                graph, [cut_from_tensors(graph, ["h"], cut_id="c1")], directories[label]
            )
        server, port = start_server(list(directories.values()))
        target = f"127.0.0.1:{port}"
        echo, echo_target = start(["bench.echo"])
        try:
            rows = {
                label: overhead(directories[label], target, echo_target, size, repeats)
                for label, size in SIZES.items()
            }
            load = throughput(directories["64KB"], target, seconds)
        finally:
            stop(server)
            stop(echo)
    results = {
        "machine": {
            "processor": platform.processor(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "command": "python -m bench.wire" + (" --quick" if args.quick else ""),
        "overhead": rows,
        "throughput": load,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("| cut tensor | splitinfer overhead ms | bare echo ms | ratio |\n|---|---:|---:|---:|")
    for label, r in rows.items():
        print(f"| {label} | {r['overhead_ms']:.2f} | {r['echo_ms']:.2f} | {r['ratio']:.2f} |")
    rate, errors = load["requests_per_s"], load["errors"]
    print(f"\n{rate:.0f} requests/s with {CLIENTS} clients, 64 KB tensors, {errors} errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
