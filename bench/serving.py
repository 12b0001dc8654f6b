"""Throughput and tail latency of one server under concurrent clients.

    .venv/bin/python -m bench.serving [--quick] [--fractions 0.6,0.8]
                                      [--out bench/results/serving.json]

The tails are convolutional: MobileNetV2 (ImageNet weights, exported with a
dynamic batch) from the single-tensor cuts nearest ``--fractions`` of its nodes. A
``splitinfer serve`` process (one ONNX Runtime thread per tail, two tails at
once) serves it; this process is the clients: ``N`` callers on one asyncio
channel, each sending its next request when the last is answered, for
``--seconds`` after a warm-up. Every request carries the same prebuilt bytes,
so the protocols cost the client alike. Grid: N in {1, 8, 32, 64} x dynamic
batching on (``--max-batch 32``) / off (``--no-batching``), two servers measured
alternately, x splitinfer.v1 (Infer, raw) / KServe v2 gRPC (ModelInfer, raw) /
KServe v2 REST with binary tensors / with JSON tensors (aiohttp's client, one
connection per caller). Client and servers share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb

from bench.processes import start_server_with_http, stop
from runtime import fastwire
from runtime.codec import encode
from runtime.engine import make_session, run_session
from runtime.kserve_types import DTYPES, model_name
from runtime.wire import splitinfer_pb2 as pb

CLIENTS = (1, 8, 32, 64)
MAX_MESSAGE = 256 << 20


def build(directory: Path, fraction: float) -> tuple[Path, str, dict[str, np.ndarray]]:
    """MobileNetV2 split at the single-tensor cut nearest ``fraction`` of its nodes: the
    artifacts, the cut id, and one request's tensors (the head's outputs on a photo)."""
    from partitioner import ModelGraph, enumerate_cuts, write_artifacts
    from partitioner.export import export_module
    from partitioner.export import models as zoo
    from partitioner.samples import imagenet_photos

    model = export_module(
        zoo.mobilenet_v2(pretrained=True), [(1, 3, 224, 224)], directory / "mobilenet_v2.onnx"
    )
    graph = ModelGraph.load(model)
    single = [c for c in enumerate_cuts(graph) if len(c.tensor_names) == 1 and c.head_nodes]
    cut = min(single, key=lambda c: abs(c.head_nodes - fraction * len(graph.nodes)))
    artifacts = directory / "artifacts"
    write_artifacts(graph, [cut], artifacts)
    photo = next(iter(imagenet_photos(224).values()))
    head = make_session(artifacts / "cuts" / cut.id / "head.onnx")
    sent = run_session(head, {graph.model.graph.input[0].name: photo})
    return artifacts, cut.id, sent


def requests(model: str, cut: str, tensors: dict[str, np.ndarray]) -> dict[str, bytes]:
    """One request's bytes per protocol: splitinfer.v1, KServe gRPC, and KServe REST
    with binary tensors and with JSON ones."""
    encoded = [encode(v, name=k) for k, v in tensors.items()]
    native = fastwire.write(pb.InferRequest(model=model, cut=cut), encoded)
    kserve = kpb.ModelInferRequest(model_name=model_name(model, cut))
    for name, value in tensors.items():
        kserve.inputs.add(name=name, datatype=DTYPES[value.dtype.name], shape=value.shape)
        kserve.raw_input_contents.append(value.tobytes())
    inputs = [
        {"name": k, "datatype": DTYPES[v.dtype.name], "shape": list(v.shape)}
        for k, v in tensors.items()
    ]
    binary_header = json.dumps(
        {
            "inputs": [
                {**i, "parameters": {"binary_data_size": v.nbytes}}
                for i, v in zip(inputs, tensors.values(), strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary = binary_header + b"".join(v.tobytes() for v in tensors.values())
    as_json = json.dumps(
        {
            "inputs": [
                {**i, "data": v.reshape(-1).tolist()}
                for i, v in zip(inputs, tensors.values(), strict=True)
            ]
        }
    ).encode()
    return {
        "splitinfer": bytes(native),
        "kserve": kserve.SerializeToString(),
        "rest-binary": binary,
        "rest-binary-header": str(len(binary_header)).encode(),
        "rest-json": as_json,
    }


METHODS = {
    "splitinfer": "/splitinfer.v1.SplitInference/Infer",
    "kserve": "/inference.GRPCInferenceService/ModelInfer",
    "rest-binary": "/v2/models/{name}/infer",
    "rest-json": "/v2/models/{name}/infer",
}


async def load_rest(
    url: str, request: bytes, header: bytes | None, clients: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """As ``load``, over KServe v2 REST (aiohttp's client, one connection per caller)."""
    import aiohttp

    headers = {"Inference-Header-Content-Length": header.decode()} if header else {}
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 1)) as session:

        async def send() -> bool:
            async with session.post(url, data=request, headers=headers) as answer:
                await answer.read()
                return answer.status == 200

        await send()
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def caller() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                if not await send():
                    errors += 1
                    continue
                if now >= measure_from:
                    latencies.append((time.perf_counter() - now) * 1000)

        await asyncio.gather(*(caller() for _ in range(clients)))
    return _summary(latencies, errors, clients, seconds)


def _summary(latencies: list[float], errors: int, clients: int, seconds: float) -> dict[str, Any]:
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
    }


async def load(
    target: str, protocol: str, request: bytes, clients: int, seconds: float, warmup: float
) -> dict[str, Any]:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(  # type: ignore[call-arg]
            METHODS[protocol],
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
            _registered_method=True,
        )
        await call(request, timeout=30)
        latencies: list[float] = []
        errors = 0
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def caller() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if now >= measure_from:
                    latencies.append((time.perf_counter() - now) * 1000)

        await asyncio.gather(*(caller() for _ in range(clients)))
    return {"protocol": protocol, **_summary(latencies, errors, clients, seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--fractions",
        default="0.6,0.8",
        help="tails to serve: the share of the nodes in the head (default 0.6,0.8)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving.json"))
    args = parser.parse_args()
    seconds, warmup = (2.0, 0.5) if args.quick else (5.0, 1.0)
    rows: list[dict[str, Any]] = []
    tails: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in (float(f) for f in args.fractions.split(",")):
            artifacts, cut, tensors = build(Path(tmp) / str(fraction), fraction)
            shapes = {k: list(v.shape) for k, v in tensors.items()}
            tails.append({"model": "mobilenet_v2", "cut": cut, "inputs": shapes})
            print(f"tail of MobileNetV2 from cut {cut}: input {shapes}", flush=True)
            rows += measure_tail(artifacts, cut, tensors, seconds, warmup)

    def rps(cut: str, batching: bool, protocol: str, clients: int) -> float:
        return next(
            r["rps"]
            for r in rows
            if (r["cut"], r["batching"], r["protocol"], r["clients"])
            == (cut, batching, protocol, clients)
        )

    gains = {
        f"{t['cut']} {p}": rps(t["cut"], True, p, 32) / rps(t["cut"], False, p, 32)
        for t in tails
        for p in METHODS
    }
    rest_vs_grpc = {
        t["cut"]: rps(t["cut"], True, "rest-binary", 8) / rps(t["cut"], True, "kserve", 8)
        for t in tails
    }
    results = {
        "machine": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "command": "python -m bench.serving " + " ".join(sys.argv[1:]),
        "tails": tails,
        "seconds_per_point": seconds,
        "rows": rows,
        "batching_gain_at_32_clients": gains,
        "rest_binary_vs_kserve_grpc_at_8_clients": rest_vs_grpc,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(
        json.dumps({"batching_gain_at_32_clients": gains, "rest_vs_grpc": rest_vs_grpc}, indent=1)
    )
    return 0


def measure_tail(
    artifacts: Path, cut: str, tensors: dict[str, np.ndarray], seconds: float, warmup: float
) -> list[dict[str, Any]]:
    """Every (protocol, clients) point against two servers, batching on and off, taken
    one after the other so that both see the same machine."""
    bodies = requests("mobilenet_v2", cut, tensors)
    servers = {}
    try:
        for batching in (True, False):
            # queue room for every client: the bound's refusals would be counted as answers
            flags = ["--max-queued", "128"] + ([] if batching else ["--no-batching"])
            servers[batching] = start_server_with_http([artifacts], options=flags)
        rows = []
        for protocol, path in METHODS.items():
            for clients in CLIENTS:
                for batching, (_, port, http_port) in servers.items():
                    if protocol.startswith("rest"):
                        url = f"http://127.0.0.1:{http_port}" + path.format(
                            name=model_name("mobilenet_v2", cut)
                        )
                        header = bodies.get(protocol + "-header")
                        row = asyncio.run(
                            load_rest(url, bodies[protocol], header, clients, seconds, warmup)
                        )
                        row["protocol"] = protocol
                    else:
                        target = f"127.0.0.1:{port}"
                        row = asyncio.run(
                            load(target, protocol, bodies[protocol], clients, seconds, warmup)
                        )
                    row.update(cut=cut, batching=batching)
                    rows.append(row)
                    print(
                        f"  batching {'on ' if batching else 'off'} {protocol:>10} "
                        f"{clients:>3} clients: {row['rps']:7.1f} req/s, "
                        f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                        f"{row['errors']} errors",
                        flush=True,
                    )
        return rows
    finally:
        for process, _, _ in servers.values():
            stop(process)


if __name__ == "__main__":
    raise SystemExit(main())
