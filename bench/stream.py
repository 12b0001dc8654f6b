"""The stream benchmark: a camera's frames through split inference, sequential
against pipelined, with and without delta coding of the features.

    .venv/bin/python -m bench.stream [--quick] [--out bench/results/stream]

MobileNetV2 with its ImageNet weights on two sequences built from the sample
photos (partitioner.samples.camera_frames): a still camera (a fixed background,
a smaller photo moving across it) and a slow pan across a larger photo. Links:
uplink {5, 20, 100} Mbit/s x RTT {10, 40} ms through the link emulator, the
device this machine 8x slower (one ONNX Runtime thread, emulated by sleeping),
the cloud a ``splitinfer serve`` process on this machine.

The profile measures the delta codecs on each sequence (``profile --frames``),
and the planner chooses, per link and sequence, the (cut, codec) with the most
frames per second (``--objective throughput``). Strategies, each over the same
frames, its first frames (the pipeline filling, the first key frame) left out:

* edge-only: every frame on the device, one after another;
* cloud-only: the input sent (zstd) with ``infer()``, one frame after another;
* sequential: ``infer()`` at the planned cut, one frame after another;
* stream: ``stream()`` at the planned cut, zstd, no delta;
* stream+delta: ``stream()`` at the planned cut, delta+zstd;
* DADS heavy-load: ``stream()`` at the cut DADS's heavy-load planner (DSH, bench.peers)
  chooses from its per-node times measured here, raw tensors as DADS sends them;
* oracle: ``stream()`` with delta at every cut served (the plans' and DADS's), the
  best kept.

Reported: frames per second, p50/p99 frame latency, uplink bytes per frame
(payloads), and per cut the bytes of delta+zstd and delta+int8+zstd against
zstd as the profile measured them. Writes ``OUT/stream.json``, ``OUT/stream.md``
and ``OUT/stream_<sequence>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import _strict, build_model, geomean
from bench.peers import dads_heavy_choice, node_times, peer_cut
from bench.processes import machine, start_server, stop
from partitioner.graph import ModelGraph
from partitioner.plan import Constraints, Link, Planner, sweep
from partitioner.profile import Profile, ProfileOptions, profile_model
from partitioner.samples import camera_frames
from partitioner.split import write_artifacts
from runtime.codec import CodecSpec
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.edge import Result
from runtime.device.linkem import LinkEmulator
from runtime.engine import SlowDevice, make_session, run_session

UPLINKS = (5, 20, 100)
RTTS = (10, 40)
SEQUENCES = ("still", "pan")
CODECS = (
    CodecSpec.parse("raw"),
    CodecSpec.parse("zstd"),
    CodecSpec.parse("zstd+shuffle"),
)
# streams may send deltas; the sequential baseline and cloud-only send the plain codec
STREAM = Constraints(codecs=frozenset({"raw", "zstd", "delta+zstd"}))
PLAIN = Constraints(codecs=frozenset({"raw", "zstd"}))


def measure(
    frames: dict[str, list[np.ndarray]], slowdown: float, quick: bool, work: Path
) -> dict[str, Any]:
    began = time.perf_counter()
    model = build_model("mobilenet_v2", work)
    graph = ModelGraph.load(model)
    name = graph.inputs[0]
    sample = {name: np.concatenate([frames["still"][0], frames["pan"][0]])}
    options = ProfileOptions(
        repeats=3 if quick else 7, warmup=1, min_time_ms=0, max_tensors=1, codecs=CODECS
    )
    local = make_session(model)
    device = SlowDevice(slowdown)
    one = {name: frames["still"][0]}
    device_ms = statistics.median(
        device.run("full model", run_session, local, one)[1] for _ in range(5)
    )
    planners: dict[str, Planner] = {}
    profiles: dict[str, Profile] = {}
    for kind in SEQUENCES:
        sequence = [{name: f} for f in frames[kind][:16]]
        cloud = profile_model(graph, sample, options, progress=False, frames=sequence)
        profiles[kind] = cloud
        edge = cloud.scaled_to("edge", device_ms)
        planners[kind] = Planner(graph, edge, cloud)
    # DADS heavy-load: its cut per uplink, from its per-node times on this machine and
    # the device measured as it is (it knows no RTT and no codec)
    node_cloud = node_times(graph, 3 if quick else 5)
    factor = device_ms / profiles["still"].full_ms.median_ms
    node_edge = [t * factor for t in node_cloud]
    heavy = {
        up: peer_cut(graph, dads_heavy_choice(graph, node_edge, node_cloud, up * 1e6).head)
        for up in UPLINKS
    }
    dsh = {up: cut.id for up, cut in heavy.items()}
    cut_ids: list[str] = list(dsh.values())
    for planner in planners.values():
        for plan in (
            sweep(planner, STREAM, uplinks_mbit=UPLINKS, rtts_ms=RTTS, objective="throughput"),
            sweep(planner, PLAIN, uplinks_mbit=UPLINKS, rtts_ms=RTTS),
        ):
            cut_ids += [c["id"] for c in plan.cuts]
    ids = list(dict.fromkeys([*cut_ids, "cloud"]))
    for planner in planners.values():
        for cut in heavy.values():
            planner.cuts.setdefault(cut.id, cut)
    artifacts = work / "artifacts"
    served = [planners["still"].cuts[i] for i in ids if i != "edge"]
    write_artifacts(graph, served, artifacts)
    print(f"  exported, profiled, planned and split in {time.perf_counter() - began:.0f} s")
    ratios = {kind: _delta_ratios(profiles[kind], [c.id for c in served]) for kind in SEQUENCES}
    count = 14 if quick else 30
    skip = 4
    points = []
    server, port = start_server([artifacts])
    try:
        with LinkEmulator("127.0.0.1", port) as link:
            for rtt in RTTS:
                for up in UPLINKS if not quick else (5, 100):
                    link.set(up_bps=up * 1e6, down_bps=up * 1e6, delay_ms=rtt / 2)
                    for kind in SEQUENCES:
                        seq = [{name: f} for f in frames[kind][:count]]
                        point = _point(
                            planners[kind], [c.id for c in served], artifacts, link.address,
                            seq, skip, up, rtt, slowdown, local, device, dsh[up],
                        )  # fmt: skip
                        point["sequence"] = kind
                        points.append(point)
                        print(f"  {kind:5} {up:>4} Mbit/s {rtt:>3} ms: {_row(point)}", flush=True)
    finally:
        stop(server)
    return {
        "model": "mobilenet_v2",
        "nodes": len(graph.nodes),
        "device_full_ms": device_ms,
        "plan_cuts": [c.id for c in served],
        "frames": count,
        "left_out": skip,
        "delta_ratios": ratios,
        "points": points,
    }


def _delta_ratios(profile: Profile, cuts: list[str]) -> dict[str, dict[str, float]]:
    """Per cut: zstd's bytes per frame over each delta codec's (as profiled)."""
    result = {}
    for cut in profile.cuts:
        if cut.id not in cuts or cut.id == "edge":
            continue
        plain = cut.codecs.get("zstd+shuffle") or cut.codecs.get("zstd")
        if plain is None:
            continue
        result[cut.id] = {
            label: plain.bytes / cost.bytes
            for label, cost in cut.codecs.items()
            if label.startswith("delta") and cost.bytes > 0
        }
        result[cut.id]["zstd_bytes"] = plain.bytes
    return result


def _point(
    planner: Planner,
    served: list[str],
    artifacts: Path,
    target: str,
    frames: list[dict[str, np.ndarray]],
    skip: int,
    up: float,
    rtt: float,
    slowdown: float,
    local: Any,
    device: SlowDevice,
    dsh_cut: str,
) -> dict[str, Any]:
    link = Link(up * 1e6, rtt)
    stream_choice = planner.choose(link, STREAM, objective="throughput")
    # each served cut with its codec predicted best on this link (the last one kept)
    ranked = sorted(stream_choice.candidates, key=lambda p: (p.predicted_fps, -p.total_ms))
    best = {p.cut: p for p in ranked}
    planned = max((best[c] for c in served if c in best), key=lambda p: p.predicted_fps)
    base = planned.codec.removeprefix("delta+")
    runs: dict[str, dict[str, Any]] = {}

    def edge_only(feeds: dict[str, np.ndarray]) -> Result:
        start = time.perf_counter()
        outputs, _ = device.run("full model", run_session, local, feeds)
        return Result(outputs, "local", "edge", {"total_ms": (time.perf_counter() - start) * 1000})

    runs["edge-only"] = _sequential(edge_only, frames, skip, None)

    def runtime(cut: str, codec: str, delta: bool) -> EdgeRuntime:
        options = EdgeOptions(
            deadline_ms=60_000.0, slowdown=slowdown, uplink_bps=up * 1e6, rtt_ms=rtt,
            codec=codec, delta=delta, cuts=(cut,), local_margin=0.0,
        )  # fmt: skip
        return EdgeRuntime(artifacts, SplitClient(target), options)

    if planned.cut != "edge":
        with runtime("cloud", "zstd", False) as cloud:
            runs["cloud-only"] = _sequential(cloud.infer, frames, skip, cloud)
        with runtime(planned.cut, base, False) as plain:
            runs["sequential"] = _sequential(plain.infer, frames, skip, plain)
            runs["stream"] = _streamed(plain, frames, skip)
        with runtime(planned.cut, base, True) as delta:
            runs["stream+delta"] = _streamed(delta, frames, skip)
    if dsh_cut == "edge":
        runs[DSH] = runs["edge-only"]
    else:
        with runtime(dsh_cut, "raw", False) as heavy:
            runs[DSH] = _streamed(heavy, frames, skip)
    oracle: dict[str, float] = {"edge": runs["edge-only"]["fps"]}
    for cut in served:
        if cut == planned.cut and "stream+delta" in runs:
            oracle[cut] = runs["stream+delta"]["fps"]
            continue
        codec = best[cut].codec.removeprefix("delta+") if cut in best else "zstd"
        with runtime(cut, codec, True) as other:
            oracle[cut] = _streamed(other, frames, skip)["fps"]
    best_cut = max(oracle, key=lambda c: oracle[c])
    planned_fps = oracle.get(planned.cut, runs["edge-only"]["fps"])
    return {
        "uplink_mbit": up,
        "rtt_ms": rtt,
        "planned_cut": planned.cut,
        "planned_codec": planned.codec,
        "predicted_fps": planned.predicted_fps,
        "dads_heavy_cut": dsh_cut,
        "stages": dataclasses.asdict(planned.stages),
        "runs": runs,
        "oracle_fps": oracle,
        "oracle_cut": best_cut,
        "planned_over_oracle": planned_fps / oracle[best_cut],
    }


def _summary(results: list[Result], seconds: float, sent: int, skip: int) -> dict[str, Any]:
    kept = results[skip:]
    latencies = sorted(r.timing.get("total_ms", math.nan) for r in kept)
    paths: dict[str, int] = {}
    for r in kept:
        paths[r.path] = paths.get(r.path, 0) + 1
    return {
        "fps": len(kept) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "bytes_per_frame": sent / len(kept),
        "paths": paths,
    }


def _sequential(
    call: Callable[[dict[str, np.ndarray]], Result],
    frames: list[dict[str, np.ndarray]],
    skip: int,
    runtime: EdgeRuntime | None,
) -> dict[str, Any]:
    results = [call(f) for f in frames[:skip]]
    sent = int(runtime.stats()["sent_bytes"]) if runtime else 0  # type: ignore[call-overload]
    start = time.perf_counter()
    results += [call(f) for f in frames[skip:]]
    seconds = time.perf_counter() - start
    after = int(runtime.stats()["sent_bytes"]) if runtime else 0  # type: ignore[call-overload]
    return _summary(results, seconds, after - sent, skip)


def _streamed(
    runtime: EdgeRuntime, frames: list[dict[str, np.ndarray]], skip: int
) -> dict[str, Any]:
    """The frames through ``stream()``: the clock and the byte count start once the
    first ``skip`` frames have come back."""
    marks: dict[str, float] = {}

    def source() -> Iterable[dict[str, np.ndarray]]:
        yield from frames

    results = []
    for n, result in enumerate(runtime.stream(source())):
        results.append(result)
        if n == skip - 1:
            marks["start"] = time.perf_counter()
            marks["sent"] = float(runtime.stats()["sent_bytes"])  # type: ignore[arg-type]
    seconds = time.perf_counter() - marks["start"]
    sent = float(runtime.stats()["sent_bytes"]) - marks["sent"]  # type: ignore[arg-type]
    return _summary(results, seconds, int(sent), skip)


def _row(point: dict[str, Any]) -> str:
    runs = point["runs"]
    cells = [f"{k}={v['fps']:.1f}" for k, v in runs.items()]
    return " ".join(cells) + f" | planned {point['planned_cut']} oracle {point['oracle_cut']}"


def headline(results: dict[str, Any]) -> dict[str, Any]:
    points = results["points"]
    splitting = [
        p for p in points if "stream" in p["runs"] and p["runs"]["stream+delta"]["fps"] >
        p["runs"]["edge-only"]["fps"]
    ]  # fmt: skip
    speedups = [
        p["runs"]["stream+delta"]["fps"] / p["runs"]["sequential"]["fps"] for p in splitting
    ]
    plain = [p["runs"]["stream"]["fps"] / p["runs"]["sequential"]["fps"] for p in splitting]
    still = [p for p in points if p["sequence"] == "still" and "stream" in p["runs"]]
    saved = [
        p["runs"]["stream"]["bytes_per_frame"] / p["runs"]["stream+delta"]["bytes_per_frame"]
        for p in still
        if p["runs"]["stream+delta"]["bytes_per_frame"] > 0
    ]
    ours_over_dsh = [
        p["oracle_fps"].get(p["planned_cut"], p["runs"]["edge-only"]["fps"]) / p["runs"][DSH]["fps"]
        for p in points
    ]
    return {
        "points": len(points),
        "points_where_splitting_beats_edge_only": len(splitting),
        "stream_delta_over_sequential_min": min(speedups, default=math.nan),
        "stream_delta_over_sequential_median": statistics.median(speedups)
        if speedups
        else math.nan,
        "stream_over_sequential_min": min(plain, default=math.nan),
        "still_bytes_zstd_over_delta_median": statistics.median(saved) if saved else math.nan,
        # the planned cut streamed (with delta where it splits) against DADS's heavy-load cut
        "planned_over_dads_heavy_geomean": geomean(ours_over_dsh),
        "planned_over_dads_heavy_min": min(ours_over_dsh, default=math.nan),
        "planned_over_oracle_min": min(p["planned_over_oracle"] for p in points),
        "planned_over_oracle_median": statistics.median(p["planned_over_oracle"] for p in points),
    }


DSH = "DADS heavy-load"
STRATEGIES = ("edge-only", "cloud-only", "sequential", "stream", "stream+delta", DSH)


def markdown(results: dict[str, Any]) -> str:
    h = results["headline"]
    lines = [
        f"Headline over {h['points']} (sequence, link) points "
        f"({h['points_where_splitting_beats_edge_only']} where splitting beats edge-only):",
        "",
        "- stream()+delta / sequential infer(), frames per second, where splitting beats "
        f"edge-only: min {h['stream_delta_over_sequential_min']:.2f}x, median "
        f"{h['stream_delta_over_sequential_median']:.2f}x (stream() without delta: min "
        f"{h['stream_over_sequential_min']:.2f}x)",
        "- still camera, uplink bytes per frame, zstd / delta+zstd at the planned cut: "
        f"median {h['still_bytes_zstd_over_delta_median']:.2f}x",
        "- throughput plan, measured fps / the best measured cut's: min "
        f"{h['planned_over_oracle_min']:.2f}, median {h['planned_over_oracle_median']:.2f}",
        "- throughput plan, measured fps / DADS heavy-load's cut: geometric mean "
        f"{h['planned_over_dads_heavy_geomean']:.2f}x, min {h['planned_over_dads_heavy_min']:.2f}x",
        "",
        "| sequence | uplink Mbit/s | RTT ms | planned (predicted fps) | "
        + " | ".join(STRATEGIES)
        + " | oracle (cut) | KB/frame: stream, +delta |",
        "|---|---:|---:|---|" + "---:|" * (len(STRATEGIES) + 2),
    ]
    for p in results["points"]:
        runs = p["runs"]
        cells = [
            p["sequence"],
            str(p["uplink_mbit"]),
            str(p["rtt_ms"]),
            f"{p['planned_cut']} {p['planned_codec']} ({p['predicted_fps']:.1f})",
        ]
        for name in STRATEGIES:
            run = runs.get(name)
            cells.append(
                "-"
                if run is None
                else f"{run['fps']:.1f} fps, p50 {run['p50_ms']:.0f} / p99 {run['p99_ms']:.0f} ms"
                + (f" ({p['dads_heavy_cut']})" if name == DSH else "")
            )
        best = p["oracle_cut"]
        cells.append(f"{p['oracle_fps'][best]:.1f} ({best})")
        if "stream" in runs:
            cells.append(
                f"{runs['stream']['bytes_per_frame'] / 1024:.0f}, "
                f"{runs['stream+delta']['bytes_per_frame'] / 1024:.0f}"
            )
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Delta codecs as profiled, zstd bytes / delta bytes per frame:", ""]
    lines += [
        "| sequence | cut | zstd KB | delta+zstd | delta+int8+zstd |",
        "|---|---|---:|---:|---:|",
    ]
    for kind, per in results["delta_ratios"].items():
        for cut, r in per.items():
            lines.append(
                f"| {kind} | {cut} | {r['zstd_bytes'] / 1024:.0f} | "
                f"{r.get('delta+zstd+shuffle', math.nan):.2f}x | "
                f"{r.get('delta+int8+zstd', math.nan):.2f}x |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for kind in SEQUENCES:
        points = [p for p in results["points"] if p["sequence"] == kind]
        rtts = sorted({p["rtt_ms"] for p in points})
        figure, axes = plt.subplots(1, len(rtts), figsize=(5 * len(rtts), 4), squeeze=False)
        for column, rtt in enumerate(rtts):
            row = [p for p in points if p["rtt_ms"] == rtt]
            ups = [p["uplink_mbit"] for p in row]
            ax = axes[0][column]
            for name in STRATEGIES:
                ax.plot(
                    ups,
                    [p["runs"][name]["fps"] if name in p["runs"] else math.nan for p in row],
                    marker="o",
                    label=name,
                )
            ax.set_xscale("log")
            ax.set_title(f"{kind} camera, RTT {rtt} ms")
            ax.set_xlabel("uplink (Mbit/s)")
            ax.set_ylabel("frames per second")
            ax.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out / f"stream_{kind}.png", dpi=100)
        plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer links and frames")
    parser.add_argument("--slowdown", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/stream"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames = {kind: camera_frames(kind, 30) for kind in SEQUENCES}
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(frames, args.slowdown, args.quick, Path(tmp))
    results = {
        "machine": machine(),
        "command": "python -m bench.stream " + " ".join(sys.argv[1:]),
        "slowdown": args.slowdown,
        "seconds": time.perf_counter() - started,
        **measured,
    }
    results["headline"] = headline(results)
    (args.out / "stream.json").write_text(
        json.dumps(_strict(results), indent=1, allow_nan=False) + "\n"
    )
    (args.out / "stream.md").write_text(markdown(results) + "\n")
    plot(results, args.out)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
