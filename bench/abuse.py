"""The server under attack: every attack of the kit (bench.attacks) against one
``splitinfer serve`` process, then a soak of well-behaved clients.

    .venv/bin/python -m bench.abuse [--quick] [--out bench/results/abuse.json]

The model is SqueezeNet from the onnx package's model-zoo graphs
(``light_squeezenet``), re-exported with a dynamic batch dimension and served
whole in the cloud (the device sends the 3x224x224 photo). For each attack:
the server's resident set before, at its peak and after (1 s idle; no forced
garbage collection), the longest health check seen meanwhile, a valid client's
p50/p99 during the attack against the same client idle (measured by a separate
process), the status codes the attacker got, and any INTERNAL or lost answer.
Goals: after within +64 MB of before, health p_max <= 50 ms, valid p99 during
<= 3x idle, 0 INTERNAL, 0 lost. Then the soak: 16 clients, mixed Infer,
InferStream and ModelInfer, 10,000+ requests: 0 errors, the resident set flat.
Everything runs on this machine; client and server share its cores.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import onnx

from bench import attacks
from bench.attacks import MiB, Outcome, Target, Watch, Workload
from runtime.codec import encode
from runtime.device.client import stream_messages
from runtime.wire import splitinfer_pb2 as pb

TOKEN = "abuse-bench-token"


def squeezenet(directory: Path) -> Workload:
    """light_squeezenet with a dynamic batch, its "cloud" cut, a real photo."""
    from partitioner import ModelGraph, cut_from_tensors, write_artifacts
    from partitioner.samples import imagenet_photos

    path = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    data = next(i for i in model.graph.input if i.name not in initializers)
    for value in (data, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    graph = ModelGraph.load(model)
    directory.mkdir(parents=True, exist_ok=True)
    write_artifacts(graph, [cut_from_tensors(graph, [data.name], cut_id="cloud")], directory)
    photo = next(iter(imagenet_photos(224).values()))
    manifest = json.loads((directory / "manifest.json").read_text())
    return Workload(directory, manifest["model"], "cloud", {data.name: photo})


def attack_list(
    workload: Workload, quick: bool
) -> list[tuple[str, list[str], Callable[[Target], Outcome]]]:
    """(name, serve options, attack) for each item of the list."""
    token = ["--token-file", "TOKEN"]
    small = ["--max-memory", "256", "--metrics-port", "0"]
    streams = 20 if quick else 50
    return [
        (
            "1. 20 x 100 MiB, no token",
            token,
            lambda t: attacks.unauthenticated_bodies(t.address, count=20, size=100 * MiB),
        ),
        (
            "1. 40 x 4 MiB, no token",
            token,
            lambda t: attacks.unauthenticated_bodies(t.address, count=40),
        ),
        (
            "1. 8 rounds x 8 x 4 MiB invalid",
            token,
            lambda t: attacks.invalid_bodies(t.address, workload, rounds=8, token=TOKEN),
        ),
        ("2. batch amplification", [], lambda t: attacks.batch_amplification(t.address, workload)),
        (
            "3. 64 probes never read",
            small,
            lambda t: _closed(attacks.probe_flood(t.address, count=64, size=4 * MiB)),
        ),
        ("4. one group, every method", [], lambda t: attacks.group_messages(t.address)),
        ("5. typed contents", [], lambda t: attacks.typed_contents(t.address, workload)),
        (
            "6. stream header lies, 2 x 256 MiB",
            [],
            lambda t: attacks.stream_header_lie(t.address, chunks=64 if quick else 256),
        ),
        (
            f"7. {streams} streams never read",
            small,
            lambda t: _closed(attacks.unread_streams(t.address, workload, count=streams)),
        ),
        (
            "8. garbage inside a stream",
            [],
            lambda t: attacks.malformed_in_stream(t.address, workload),
        ),
        (
            "10. 20,000 rapid resets",
            [],
            lambda t: attacks.rapid_reset(t.address, streams=5000 if quick else 20_000),
        ),
        ("11. 60 KB model name", [], lambda t: attacks.long_name(t.address)),
        ("12. two tokens", token, lambda t: attacks.duplicate_tokens(t.address, TOKEN)),
    ]


def _closed(outcome: Outcome) -> Outcome:
    attacks.close_all(outcome)
    return outcome


def run_attack(
    workload: Workload,
    options: list[str],
    attack: Callable[[Target], Outcome],
    token_file: Path,
    seconds_idle: float,
) -> dict[str, Any]:
    options = [str(token_file) if o == "TOKEN" else o for o in options]
    token = TOKEN if "--token-file" in options else None
    with Target([workload.directory], options, token=token) as server:
        request = workload.infer_bytes()
        watch = Watch(server.address, request, token=token)
        time.sleep(seconds_idle)
        idle = watch.stop()
        before = server.settle(0.5)
        cpu = server.cpu_s()
        watch = Watch(server.address, request, token=token)
        started = time.perf_counter()
        with attacks.PeakRSS(server) as peak:
            outcome = attack(server)
        took = time.perf_counter() - started
        seen = watch.stop()
        after = server.settle(1.0)
        cpu = server.cpu_s() - cpu
    lost = sum(n for code, n in seen.codes.items() if code != "OK")
    return {
        "codes": outcome.codes,
        "notes": {k: v for k, v in outcome.notes.items() if k != "clients"},
        "seconds": took,
        "server_cpu_s": cpu,
        "rss_before_mb": before / 1e6,
        "rss_peak_mb": peak.peak / 1e6,
        "rss_after_mb": after / 1e6,
        "health_max_ms": seen.health_max_ms,
        "valid_p50_ms": seen.infer_percentile(0.5),
        "valid_p99_ms": seen.infer_percentile(0.99),
        "idle_p50_ms": idle.infer_percentile(0.5),
        "idle_p99_ms": idle.infer_percentile(0.99),
        "valid_requests": len(seen.infer_ms),
        "valid_codes": seen.codes,
        "internal": outcome.codes.get("INTERNAL", 0) + seen.codes.get("INTERNAL", 0),
        "lost": lost,
    }


# ------------------------------------------------------------------ the soak


async def soak(target: str, workload: Workload, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` callers, each sending its share of ``requests`` as Infer, ModelInfer
    and InferStream requests in turn; every answer checked for an error."""
    native = workload.infer_bytes()
    kserve = workload.kserve_request().SerializeToString()
    encoded = [encode(v, name=k) for k, v in workload.tensors.items()]
    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.use_local_subchannel_pool", 1)]
    counts = {"Infer": 0, "ModelInfer": 0, "InferStream": 0}
    errors: dict[str, int] = {}

    async def caller(index: int, channel: grpc.aio.Channel) -> None:
        infer: Any = channel.unary_unary(attacks.INFER)
        model_infer: Any = channel.unary_unary(attacks.MODEL_INFER)
        stream: Any = channel.stream_stream(attacks.INFER_STREAM)
        share = requests // clients
        sent = turn = 0
        while sent < share:
            kind = ("Infer", "ModelInfer", "InferStream")[turn % 3]
            turn += 1
            try:
                if kind == "Infer":
                    await infer(native, timeout=60)
                    sent += 1
                elif kind == "ModelInfer":
                    await model_infer(kserve, timeout=60)
                    sent += 1
                else:
                    batch = min(8, share - sent)
                    messages = [
                        m.SerializeToString()
                        for n in range(batch)
                        for m in stream_messages(
                            workload.model, workload.cut, encoded, f"{index}-{sent}-{n}", MiB
                        )
                    ]
                    answers = [
                        pb.StreamResponse.FromString(a) async for a in stream(iter(messages))
                    ]
                    for answer in answers:
                        if answer.WhichOneof("item") == "error":
                            errors[str(answer.error.code)] = (
                                errors.get(str(answer.error.code), 0) + 1
                            )
                    if len(answers) != batch:
                        errors["lost"] = errors.get("lost", 0) + batch - len(answers)
                    sent += batch
                    counts[kind] += batch - 1
                counts[kind] += 1
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                sent += 1

    start = time.perf_counter()
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
    try:
        await asyncio.gather(*(caller(i, ch) for i, ch in enumerate(channels)))
    finally:
        for ch in channels:
            await ch.close()
    return {"counts": counts, "errors": errors, "seconds": time.perf_counter() - start}


def run_soak(workload: Workload, clients: int, requests: int) -> dict[str, Any]:
    with Target([workload.directory], ["--max-queued", "64"]) as server:
        start_rss = server.settle(0.5)
        samples = []
        done = asyncio.Event()

        async def sampling() -> None:
            while not done.is_set():
                samples.append(server.rss())
                await asyncio.sleep(0.5)

        async def both() -> dict[str, Any]:
            sampler = asyncio.create_task(sampling())
            half = await soak(server.address, workload, clients, requests // 2)
            middle = server.rss()
            rest = await soak(server.address, workload, clients, requests - requests // 2)
            done.set()
            await sampler
            return {"halves": [half, rest], "rss_middle_mb": middle / 1e6}

        result = asyncio.run(both())
        end_rss = server.settle(1.0)
    result.update(
        clients=clients,
        requests=requests,
        rss_start_mb=start_rss / 1e6,
        rss_max_mb=max(samples) / 1e6,
        rss_end_mb=end_rss / 1e6,
    )
    return result


def _table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| attack | attacker got | RSS before/peak/after MB | health max ms "
        "| valid p50/p99 ms (idle) | INTERNAL | lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items()))
        lines.append(
            f"| {name} | {codes} | {r['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f} / "
            f"{r['rss_after_mb']:.0f} | {r['health_max_ms']:.1f} | {r['valid_p50_ms']:.1f} / "
            f"{r['valid_p99_ms']:.1f} ({r['idle_p50_ms']:.1f} / {r['idle_p99_ms']:.1f}) | "
            f"{r['internal']} | {r['lost']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams and requests")
    parser.add_argument("--out", type=Path, default=Path("bench/results/abuse.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workload = squeezenet(Path(tmp) / "squeezenet")
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN)
        for name, options, attack in attack_list(workload, args.quick):
            rows[name] = run_attack(
                workload, options, attack, token_file, 1.0 if args.quick else 3.0
            )
            r = rows[name]
            print(
                f"{name}: {r['codes']} rss {r['rss_before_mb']:.0f}/{r['rss_peak_mb']:.0f}/"
                f"{r['rss_after_mb']:.0f} MB, health max {r['health_max_ms']:.1f} ms, valid "
                f"p99 {r['valid_p99_ms']:.1f} ms (idle {r['idle_p99_ms']:.1f}), lost {r['lost']}",
                flush=True,
            )
        requests = 1200 if args.quick else 10_200
        soaked = run_soak(workload, 16, requests)
        print(json.dumps({k: v for k, v in soaked.items() if k != "halves"}), flush=True)
    goals = {
        "rss_after_within_64mb": all(
            r["rss_after_mb"] - r["rss_before_mb"] <= 64 for r in rows.values()
        ),
        "health_max_50ms": all(r["health_max_ms"] <= 50 for r in rows.values()),
        "valid_p99_3x_idle": all(r["valid_p99_ms"] <= 3 * r["idle_p99_ms"] for r in rows.values()),
        "no_internal": all(r["internal"] == 0 for r in rows.values()),
        "none_lost": all(r["lost"] == 0 for r in rows.values()),
        "soak_no_errors": all(not h["errors"] for h in soaked["halves"]),
    }
    results = {
        "machine": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "command": "python -m bench.abuse " + " ".join(sys.argv[1:]),
        "model": "light_squeezenet (onnx model zoo), dynamic batch, cut 'cloud'",
        "attacks": rows,
        "soak": soaked,
        "goals": goals,
        "median_health_max_ms": statistics.median(r["health_max_ms"] for r in rows.values()),
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    args.out.with_suffix(".md").write_text(_table(rows) + "\n")
    print(_table(rows))
    print(json.dumps(goals, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
