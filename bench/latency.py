"""The latency benchmark: split inference against edge-only, cloud-only and the oracle.

    .venv/bin/python -m bench.latency [--quick] [--models mobilenet_v2,resnet50,...]
                                      [--out bench/results/latency]

Models: the real MobileNetV2 (ImageNet weights) on views of real photos, and
networks shaped like ResNet-50, VGG-16 (112x112 inputs) and a transformer
encoder (64 tokens of 256), with random weights and random inputs (fine for
timing); ``tiny`` is a small test graph. Links:
uplink {1, 5, 10, 25, 50, 100, 1000} Mbit/s x RTT {5, 40, 100} ms through the
link emulator (``--quick``: {10, 100, 1000} x {5, 40}). The device is this
machine ``--slowdown`` times slower (default 8; one ONNX Runtime thread); the
cloud is a ``splitinfer serve`` process on this machine (one thread, the other
core). Strategies, each the median of several requests measured end to end, in rounds
of one request per strategy:

* edge-only: the whole model on the device (measured at each link, beside the
  others);
* cloud-only: the raw input sent, with the best lossless codec for the link;
* planned: the planner's (cut, codec) for the true link, as a static split;
* adaptive: EdgeRuntime started from default estimates (10 Mbit/s, 40 ms),
  measured after a few warm-up requests, over a link of its own shaped alike (its
  prober's payloads would hold up the other strategies' requests on a shared one);
* Neurosurgeon and DADS (bench.peers; ``--no-peers`` leaves them out): each
  peer's planner fed with its own inputs measured here (Neurosurgeon's per-layer-
  type regressions, DADS's per-node times), its cut sent raw as the peer does;
* oracle: every cut served (the plan's and the peers') and every route measured,
  the best kept.

The planner prices what a split call itself costs (partitioner.calls): measured
once per RTT through the link emulator against the same server, with two trivial
models, before the points of that RTT.

Device energy per request, for the LTE, 3G and Wi-Fi radio presets of
runtime.power (Huang et al., MobiSys 2012; the device's compute and idle power
are the presets' example figures, not a measurement): each strategy's energy is
estimated from its measured times (head and encoding at compute power, the
bytes at the radio's power for the link's rate, the rest of the request idle;
edge-only all at compute power), the median over the rounds. The energy plan is
the planner's least-energy (cut, codec) for the preset, measured like the others;
the energy oracle is the measured strategy (every plan cut) that spent least.

Writes ``OUT/latency.json`` (every measurement), ``OUT/latency.md`` (tables and
headline figures) and ``OUT/<model>.png`` (latency vs bandwidth per strategy,
and the planned cut vs bandwidth).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers import LayerPredictors, PeerChoice, peer_cuts, peer_decisions
from bench.processes import machine, start_server, stop
from partitioner.calls import measure_call_cost, write_call_models
from partitioner.graph import ModelGraph
from partitioner.plan import Constraints, Link, Planner, sweep
from partitioner.profile import Profile, ProfileOptions, calibration_feeds, profile_model
from partitioner.split import write_artifacts
from runtime.codec import CodecSpec
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.edge import StaticSplit
from runtime.device.linkem import LinkEmulator
from runtime.engine import SlowDevice, make_session, run_session
from runtime.errors import SplitInferError
from runtime.power import PowerModel, preset

UPLINKS = (1, 5, 10, 25, 50, 100, 1000)
RTTS = (5, 40, 100)
QUICK_UPLINKS = (10, 100, 1000)
QUICK_RTTS = (5, 40)
LOSSLESS = Constraints(codecs=frozenset({"raw", "zstd"}))
MISSED = float("nan")  # a strategy that could not answer within its timeout
CONTENDERS = 1.15  # strategies this close to the fastest are measured again, side by side
WARM_UP_S = 1.0  # the adaptive runtime's time to learn the link (its prober runs every 0.2 s)
RADIOS = ("lte", "3g", "wifi")
PEERS = {"neurosurgeon": "Neurosurgeon", "dads": "DADS"}  # the peers' planners (bench.peers)


def build_model(name: str, directory: Path) -> Path:
    """The model file for ``name`` (exported with torch, or built in code for ``tiny``)."""
    path = directory / f"{name}.onnx"
    if name.startswith("light_"):  # a graph of the onnx package's model zoo (test models)
        import onnx

        zoo_path = Path(onnx.__file__).parent / "backend/test/data/light" / f"{name}.onnx"
        if not zoo_path.exists():
            raise SystemExit(f"no model {name!r} in the onnx package's light test models")
        return zoo_path
    if name == "tiny":
        import onnx

        from tests.graphs import chain_cnn

        onnx.save_model(chain_cnn(), str(path))
        return path
    from partitioner.export import export_module
    from partitioner.export import models as zoo

    factories: dict[str, tuple[Callable[[], Any], tuple[int, ...]]] = {
        "mobilenet_v2": (lambda: zoo.mobilenet_v2(pretrained=True), (1, 3, 224, 224)),
        "resnet50": (lambda: zoo.seeded(zoo.ResNet50()), (1, 3, 112, 112)),
        "vgg16": (lambda: zoo.seeded(zoo.VGG16()), (1, 3, 112, 112)),
        "transformer": (lambda: zoo.seeded(zoo.TransformerEncoder()), (1, 64, 256)),
    }
    if name not in factories:
        raise SystemExit(f"unknown model {name!r}; known: tiny, {', '.join(factories)}")
    factory, shape = factories[name]
    return export_module(factory(), [shape], path)


def _device_profile(cloud: Profile, edge_ms: float, slowdown: float) -> Profile:
    """This machine's profile scaled to the emulated device's measured full-model time;
    for a model so small that a run after idling costs this machine more than the
    device's whole run (the tiny test model, 0.03 ms warm), the device's nominal
    slowdown."""
    if edge_ms <= cloud.cold_ms:
        return cloud.emulating("edge", slowdown)
    return cloud.scaled_to("edge", edge_ms)


def _median_ms(call: Callable[[], Any], count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        try:
            call()
        except SplitInferError:
            return MISSED
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_model(
    name: str,
    work: Path,
    slowdown: float,
    quick: bool,
    layers: LayerPredictors | None = None,
    links: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Every strategy on every link (``links``: uplinks in Mbit/s and RTTs in ms) for
    one model; with ``layers`` (Neurosurgeon's fitted predictors), the peers' cuts
    too."""
    began = time.perf_counter()
    model = build_model(name, work)
    graph = ModelGraph.load(model)
    feeds = calibration_feeds(graph, samples=2)
    if name == "mobilenet_v2":  # the real network sees real photos (their bytes compress)
        from partitioner.samples import imagenet_photo_views

        feeds = {graph.inputs[0]: imagenet_photo_views(2)}
    one = {k: v[:1] for k, v in feeds.items()}
    options = ProfileOptions(
        repeats=3 if quick else 7,
        warmup=1,
        min_time_ms=0,
        max_tensors=1,
        codecs=(CodecSpec.parse("raw"), CodecSpec.parse("zstd")),  # lossless plans
    )
    cloud = profile_model(graph, feeds, options, progress=False, calls=True)
    uplinks, rtts = links or ((QUICK_UPLINKS, QUICK_RTTS) if quick else (UPLINKS, RTTS))
    requests = 3 if quick else 5
    local = make_session(model)
    device = SlowDevice(slowdown)  # the emulated device: every strategy computes on it

    def edge_only() -> None:
        device.run("full model", run_session, local, one)

    edge_ms = _median_ms(edge_only, requests * 2)
    # The device's profile: this machine's, scaled to the device's measured full-model
    # time (measured, not assumed from the slowdown).
    edge = _device_profile(cloud, edge_ms, slowdown)
    planner = Planner(graph, edge, cloud)
    plan = sweep(planner, LOSSLESS)
    # Only single-tensor cuts are profiled here (for time; the CLI's profile takes every
    # cut of up to 8 tensors): the plan's cuts that the additive model alone priced are
    # measured now, and the plan made again with them, until it chooses none.
    for _ in range(3):
        profiled = {c.id for c in cloud.cuts}
        priced = [planner.cuts[c["id"]] for c in plan.cuts if c["id"] not in profiled]
        if not priced:
            break
        later = profile_model(graph, feeds, options, cuts=priced, progress=False)
        cloud = cloud.with_cuts(later)
        edge = _device_profile(cloud, edge_ms, slowdown)
        planner = Planner(graph, edge, cloud)
        plan = sweep(planner, LOSSLESS)
    # the peers' decisions per uplink (they know no RTT), on the same measured device
    peers = (
        peer_decisions(graph, layers, edge_ms / cloud.full_ms.median_ms, uplinks, quick)
        if layers is not None
        else {}
    )
    peer_ids: dict[float, dict[str, str]] = {}
    for up in uplinks:
        chosen = peer_cuts(graph, peers, up)
        for cut in chosen.values():
            planner.cuts.setdefault(cut.id, cut)
        peer_ids[up] = {peer: cut.id for peer, cut in chosen.items()}
    ids = [c["id"] for c in plan.cuts] + [i for per in peer_ids.values() for i in per.values()]
    ids = list(dict.fromkeys([*ids, "cloud"]))  # cloud: for cloud-only
    artifacts = work / f"{name}-artifacts"
    write_artifacts(graph, [planner.cuts[i] for i in ids], artifacts, plan=plan.to_json())
    print(f"  exported, profiled, planned and split in {time.perf_counter() - began:.0f} s")
    server, port = start_server([artifacts, *write_call_models(work / f"{name}-calls")])
    points = []
    try:
        # The adaptive runtime gets a link of its own, shaped alike: its prober's payloads
        # (16-256 KiB when its estimates go stale while the other strategies take their
        # turns) would otherwise hold up their requests on the one emulated wire.
        with (
            LinkEmulator("127.0.0.1", port) as link,
            LinkEmulator("127.0.0.1", port) as own,
            SplitClient(link.address) as client,
        ):
            client.wait_ready(10)
            for rtt in rtts:
                for shaped in (link, own):
                    shaped.set(up_bps=1e9, down_bps=1e9, delay_ms=rtt / 2)
                calls = measure_call_cost(link.address, rtt_ms=rtt, repeats=15)
                print(
                    f"  a call costs {calls[0]:.2f} ms + {calls[1]:.2f} ms a tensor at RTT {rtt} ms"
                )
                for up in uplinks:
                    for shaped in (link, own):
                        shaped.set(up_bps=up * 1e6, down_bps=up * 1e6, delay_ms=rtt / 2)
                    points.append(
                        _point(
                            planner,
                            [c["id"] for c in plan.cuts],
                            artifacts,
                            client,
                            own.address,
                            one,
                            up,
                            rtt,
                            edge_only,
                            edge_ms,
                            device,
                            requests,
                            calls,
                            {
                                peer: (c[up] if isinstance(c, dict) else c)
                                for peer, c in peers.items()
                            },
                            peer_ids[up],
                        )
                    )
                    print(f"  {name} {up:>5} Mbit/s {rtt:>3} ms: " + _row(points[-1]), flush=True)
    finally:
        stop(server)
    return {
        "model": name,
        "nodes": len(graph.nodes),
        "plan_cuts": list(dict.fromkeys([*(c["id"] for c in plan.cuts), "cloud"])),
        "served_cuts": ids,  # the plan's, the peers' and cloud-only
        "device_full_ms": edge_ms,  # the profile was scaled to this
        "points": points,
    }


def _point(
    planner: Planner,
    plan_cuts: list[str],
    artifacts: Path,
    client: SplitClient,
    adaptive_target: str,  # the adaptive runtime's own link
    feeds: dict[str, np.ndarray],
    up: float,
    rtt: float,
    edge_only: Callable[[], None],
    edge_ms: float,
    device: SlowDevice,
    requests: int,
    calls: tuple[float, float] = (0.0, 0.0),
    peers: dict[str, PeerChoice | str] | None = None,
    peer_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every strategy on one link, measured in rounds: each round times one request
    of every strategy in turn, so that a slow moment of this shared machine weighs
    on all of them alike; then the contenders (within CONTENDERS of the fastest) go
    twice as many rounds more. Each strategy's figure is its median over its rounds."""
    link = Link(up * 1e6, rtt, call_ms=calls[0], tensor_ms=calls[1])
    timeout = max(10.0, 4 * edge_ms / 1000)

    def static(cut: str, codec: str) -> Callable[[], Any]:
        split = StaticSplit(
            artifacts,
            client,
            cut=cut,
            codec=CodecSpec.parse(codec if codec != "-" else "raw"),
            timeout=timeout,
            device=device,  # the head and the encoding run on the emulated device
        )
        return lambda: split.infer(feeds)

    choice = planner.choose(link, LOSSLESS)
    served = served_cuts(artifacts)  # the plan's, the peers' and cloud for cloud-only
    # each served cut with the codec predicted best for it on this link: the oracle
    # measures them all; the planned cut (the plan's best here) and cloud-only (the
    # input sent with the best lossless codec) are two of those measurements
    best_codec = {
        p.cut: p for p in sorted(choice.candidates, key=lambda p: -p.total_ms) if p.cut in served
    }
    strategies: dict[str, Callable[[], Any]] = {"edge": edge_only}
    routes: dict[str, tuple[str, str]] = {"edge": ("edge", "-")}
    for cut in served:
        if cut != "edge":
            codec = best_codec[cut].codec if cut in best_codec else "raw"
            strategies[cut] = static(cut, codec)
            routes[cut] = (cut, codec)
    # each radio's least-energy plan among the served cuts, measured like the others
    energy_plans: dict[str, Any] = {}
    for radio in RADIOS:
        planner.power = preset(radio)
        try:
            priced = planner.choose(link, LOSSLESS, "energy").candidates
        finally:
            planner.power = None
        best = min((p for p in priced if p.cut in served), key=lambda p: p.energy_mj or 0)
        energy_plans[radio] = best
        route = (best.cut, best.codec)
        if route not in routes.values():
            strategies[f"energy:{radio}"] = static(best.cut, best.codec)
            routes[f"energy:{radio}"] = route
    # each peer's cut as the peer sends it (raw), measured once with any equal route
    peer_ids = peer_ids or {}
    for peer, cut in peer_ids.items():
        route = (cut, "-" if cut == "edge" else "raw")
        if route not in routes.values():
            strategies[f"peer:{peer}"] = static(cut, "raw")
            routes[f"peer:{peer}"] = route
    planned = min((p for p in choice.candidates if p.cut in plan_cuts), key=lambda p: p.total_ms)
    options = EdgeOptions(deadline_ms=max(1000.0, 4 * edge_ms), slowdown=device.factor)
    with EdgeRuntime(artifacts, SplitClient(adaptive_target), options) as runtime:
        warm_until = time.monotonic() + WARM_UP_S
        for count in itertools.count():  # warm up from the default estimates
            runtime.infer(feeds)
            if count >= 3 and time.monotonic() > warm_until:
                break
        strategies["adaptive"] = lambda: runtime.infer(feeds)
        times, samples = _rounds(strategies, requests)
        _measure_contenders_again(strategies, times, samples, 2 * requests)
        cuts: dict[str, int] = runtime.stats()["cuts"]  # type: ignore[assignment]
        adaptive_cut = max(cuts.items(), key=lambda kv: kv[1])[0]
    adaptive_ms = times.pop("adaptive")
    # every route measured, by cut (with the codec when it is not the cut's best here)
    labels = {k: k if k in served or k == "edge" else " ".join(routes[k]) for k in routes}
    # each route as the plan prices it (a peer's cut the profile lacks: the additive model)
    by_route = {(p.cut, p.codec): p for p in choice.candidates}
    for cut, codec in routes.values():
        if (cut, codec) not in by_route and cut != "edge":
            estimate = planner.price(planner.cuts[cut], codec, link)
            if estimate is not None:
                by_route[(cut, codec)] = estimate
    energy = _energies(samples, routes, by_route, link, energy_plans, labels)
    oracle = {labels[k]: v for k, v in times.items()}
    cloud_ms, planned_ms = oracle["cloud"], oracle[planned.cut]
    fastest = min(times, key=lambda k: times[k] if not math.isnan(times[k]) else math.inf)
    point: dict[str, Any] = {
        "uplink_mbit": up,
        "rtt_ms": rtt,
        "edge_only_ms": oracle["edge"],
        "cloud_only_ms": cloud_ms,
        "planned_ms": planned_ms,
        "planned_cut": planned.cut,
        "planned_codec": planned.codec,
        "predicted_ms": planned.total_ms,
        "adaptive_ms": adaptive_ms,
        "adaptive_cut": adaptive_cut,
        "oracle_ms": times[fastest],
        "oracle_cut": routes[fastest][0],
        "measured_cuts": oracle,
        "routes": {labels[k]: list(route) for k, route in routes.items()},  # cut, codec
        "candidates": len(choice.candidates),
        "call_ms": calls[0],
        "tensor_ms": calls[1],
        "energy": energy,
        # where each measured cut's time went, beside what the plan predicted for it
        "breakdown": {
            name: _breakdown(by_route.get(routes[name]), samples[name])
            for name in routes
            if name != "edge" and samples[name]
        },
        "peers": {},
    }
    for peer, decided in (peers or {}).items():
        if isinstance(decided, str):
            point["peers"][peer] = {"error": decided}
            continue
        cut = peer_ids[peer]
        name = next(k for k, v in routes.items() if v == (cut, "-" if cut == "edge" else "raw"))
        # the peer's own prediction (it prices no round trip) beside the measurement
        point["peers"][peer] = {
            "cut": cut,
            "measured_ms": times[name],
            "predicted_ms": decided.predicted_ms,
        }
    return point


PARTS = ("head_ms", "encode_ms", "network_ms", "server_ms", "decode_ms")


def _breakdown(predicted: Any, samples: list[tuple[float, Any]]) -> dict[str, dict[str, float]]:
    """A split's median measured time per part, and the plan's prediction of each part
    (the network: transfer, RTT, the call's cost and the return; the server: decoding
    and the tail)."""
    measured = {k: statistics.median(r.timing[k] for _, r in samples) for k in PARTS}
    if predicted is None:
        return {"measured": measured}
    p = predicted
    return {
        "measured": measured,
        "predicted": {
            "head_ms": p.edge_ms + p.edge_cold_ms,
            "encode_ms": p.encode_ms,
            "network_ms": p.transfer_ms + p.rtt_ms + p.call_ms + p.return_ms,
            # the cut tensors decoded, the tail
            "server_ms": p.decode_ms + p.cloud_ms + p.cloud_cold_ms,
            "decode_ms": 0.0,  # the answer's decoding here: not priced (outputs are raw)
        },
    }


def _energies(
    samples: dict[str, list[tuple[float, Any]]],
    routes: dict[str, tuple[str, str]],
    priced: dict[tuple[str, str], Any],
    link: Link,
    plans: dict[str, Any],
    labels: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Per radio preset, each measured route's median device energy (mJ) estimated from
    its requests' measured times and the bytes the plan prices it to send, and the
    energy plan against the least of them."""
    ours = {name: route for name, route in routes.items() if name == "edge" or route in priced}
    result = {}
    for radio in RADIOS:
        power = preset(radio)
        spent = {}
        for name, route in ours.items():
            values = [
                _spent(power, elapsed, r, priced.get(route), link) for elapsed, r in samples[name]
            ]
            spent[name] = statistics.median(values) if values else MISSED
        best = min(spent, key=lambda k: spent[k] if math.isfinite(spent[k]) else math.inf)
        plan = plans[radio]
        name = next(k for k, v in ours.items() if v == (plan.cut, plan.codec))
        result[radio] = {
            "edge_only_mj": spent["edge"],
            "cloud_only_mj": spent.get("cloud", MISSED),
            "energy_plan_mj": spent[name],
            "energy_plan_cut": plan.cut,
            "predicted_mj": plan.energy_mj,
            "oracle_mj": spent[best],
            "oracle_cut": ours[best][0],
            "measured": {labels[k]: v for k, v in spent.items()},
        }
    return result


def _spent(power: PowerModel, elapsed_ms: float, result: Any, predicted: Any, link: Link) -> float:
    """A request's device energy from its measured times: edge-only all at compute
    power; a split's head and encoding at compute power, its bytes at the radio's power
    for the link's rate (the times the bytes take at that rate), the rest idle."""
    if result is None or predicted is None:
        return power.energy_mj(compute_ms=elapsed_ms)
    timing = result.timing
    return power.split_mj(
        total_ms=timing["total_ms"],
        compute_ms=timing["head_ms"] + timing["encode_ms"],
        transfer_ms=predicted.transfer_ms,
        return_ms=predicted.return_ms,
        uplink_mbit=link.uplink_bps / 1e6,
        downlink_mbit=(link.downlink_bps or link.uplink_bps) / 1e6,
    )


def _rounds(
    strategies: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, float], dict[str, list[tuple[float, Any]]]]:
    """The median ms of each strategy over ``rounds`` rounds of one request each, and
    every request's (ms, what the call returned); a strategy that failed (a missed
    deadline) is MISSED and not called again."""
    samples: dict[str, list[tuple[float, Any]]] = {name: [] for name in strategies}
    missed: set[str] = set()
    for _ in range(rounds):
        for name, call in strategies.items():
            if name in missed:
                continue
            start = time.perf_counter()
            try:
                answer = call()
            except SplitInferError:
                missed.add(name)
                continue
            samples[name].append(((time.perf_counter() - start) * 1000, answer))
    medians = {
        name: MISSED if name in missed else statistics.median(ms for ms, _ in values)
        for name, values in samples.items()
    }
    return medians, {name: [] if name in missed else v for name, v in samples.items()}


def _measure_contenders_again(
    strategies: dict[str, Callable[[], Any]],
    times: dict[str, float],
    samples: dict[str, list[tuple[float, Any]]],
    rounds: int,
) -> None:
    """Measure the strategies within CONTENDERS of the fastest for ``rounds`` more rounds
    and keep each one's median over all its requests (in place). Five requests leave a
    100 ms tail's median some 10% apart from one run to the next: the comparisons that
    decide a point (the plan, the peers and the fastest) need more, alike for all."""
    measured = [ms for ms in times.values() if not math.isnan(ms)]
    if not measured:
        return
    close = {k: strategies[k] for k, ms in times.items() if ms <= CONTENDERS * min(measured)}
    if len(close) < 2:
        return
    again, more = _rounds(close, rounds)
    for name in close:
        samples[name] = samples[name] + more[name] if more[name] else []
        times[name] = (
            MISSED if math.isnan(again[name]) else statistics.median(ms for ms, _ in samples[name])
        )


def served_cuts(artifacts: Path) -> list[str]:
    from runtime.artifacts import load_manifest

    return [c.id for c in load_manifest(artifacts).cuts]


def _row(point: dict[str, Any]) -> str:
    keys = ("edge_only_ms", "cloud_only_ms", "planned_ms", "adaptive_ms", "oracle_ms")
    return " ".join(f"{k.removesuffix('_ms')}={point[k]:.1f}" for k in keys)


def geomean(values: list[float]) -> float:
    """The geometric mean of the positive, finite values (NaN when there are none)."""
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def headline(models: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures over every (model, link) point of the run."""
    points = [p for m in models for p in m["points"]]

    def ratio(a: str, b: str) -> list[float]:
        return [p[a] / p[b] for p in points if math.isfinite(p[a]) and math.isfinite(p[b])]

    cloud_or_inf = [
        p["cloud_only_ms"] if math.isfinite(p["cloud_only_ms"]) else math.inf for p in points
    ]
    better = [min(p["edge_only_ms"], c) for p, c in zip(points, cloud_or_inf, strict=True)]
    return {
        "points": len(points),
        "speedup_vs_cloud_geomean": geomean(ratio("cloud_only_ms", "planned_ms")),
        "speedup_vs_edge_geomean": geomean(ratio("edge_only_ms", "planned_ms")),
        "adaptive_speedup_vs_cloud_geomean": geomean(ratio("cloud_only_ms", "adaptive_ms")),
        "worst_vs_better_of_edge_and_cloud": max(
            p["planned_ms"] / b for p, b in zip(points, better, strict=True)
        ),
        "planned_over_oracle_max": max(ratio("planned_ms", "oracle_ms"), default=math.nan),
        "planned_over_oracle_median": statistics.median(ratio("planned_ms", "oracle_ms"))
        if points
        else math.nan,
        "energy": {radio: _energy_headline(points, radio) for radio in RADIOS},
        "adaptive_over_oracle_max": max(ratio("adaptive_ms", "oracle_ms"), default=math.nan),
        "adaptive_over_oracle_median": statistics.median(ratio("adaptive_ms", "oracle_ms"))
        if points
        else math.nan,
        "peers": _peer_headline(points),
    }


def _peer_headline(points: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per peer, over the points where it could plan: the planned cut's geometric-mean
    speed-up over the peer's measured cut, and the worst planned / peer."""
    result = {}
    for peer in PEERS:
        pairs = [
            (p["peers"][peer]["measured_ms"], p["planned_ms"])
            for p in points
            if "measured_ms" in p.get("peers", {}).get(peer, {})
        ]
        pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
        if pairs:
            result[peer] = {
                "points": len(pairs),
                "speedup_geomean": geomean([a / b for a, b in pairs]),
                "planned_over_peer_max": max(b / a for a, b in pairs),
            }
    return result


def _energy_headline(points: list[dict[str, Any]], radio: str) -> dict[str, float]:
    rows = [p["energy"][radio] for p in points if "energy" in p]

    def ratios(key: str) -> list[float]:
        return [
            r["energy_plan_mj"] / r[key]
            for r in rows
            if math.isfinite(r[key]) and math.isfinite(r["energy_plan_mj"]) and r[key] > 0
        ]

    over = [r["energy_plan_mj"] / r["oracle_mj"] for r in rows if r["oracle_mj"] > 0]
    return {
        "energy_plan_over_oracle_max": max(over, default=math.nan),
        "energy_plan_over_oracle_median": statistics.median(over) if over else math.nan,
        "saving_vs_edge_geomean": 1 - geomean(ratios("edge_only_mj")),
        "saving_vs_cloud_geomean": 1 - geomean(ratios("cloud_only_mj")),
    }


def markdown(results: dict[str, Any]) -> str:
    h = results["headline"]
    lines = [
        f"Headline over {h['points']} (model, link) points:",
        "",
        "- geometric-mean speed-up of the planned cut: "
        f"{h['speedup_vs_cloud_geomean']:.2f}x vs cloud-only, "
        f"{h['speedup_vs_edge_geomean']:.2f}x vs edge-only "
        f"(adaptive: {h['adaptive_speedup_vs_cloud_geomean']:.2f}x vs cloud-only)",
        "- worst case, planned vs the better of edge-only and cloud-only: "
        f"{h['worst_vs_better_of_edge_and_cloud']:.2f}x",
        f"- plan quality, planned / oracle: median {h['planned_over_oracle_median']:.2f}, "
        f"worst {h['planned_over_oracle_max']:.2f}",
        f"- adaptive / oracle: median {h['adaptive_over_oracle_median']:.2f}, "
        f"worst {h['adaptive_over_oracle_max']:.2f}",
        *(
            f"- device energy, {radio}: energy plan / least measured: median "
            f"{e['energy_plan_over_oracle_median']:.2f}, "
            f"worst {e['energy_plan_over_oracle_max']:.2f}; "
            f"geometric-mean saving {100 * e['saving_vs_edge_geomean']:.1f}% vs edge-only, "
            f"{100 * e['saving_vs_cloud_geomean']:.1f}% vs cloud-only"
            for radio, e in h["energy"].items()
        ),
        *(
            f"- against {PEERS[peer]} (its cut, measured, at {e['points']} points): "
            f"planned is {e['speedup_geomean']:.2f}x faster (geometric mean); "
            f"worst planned / {PEERS[peer]}: {e['planned_over_peer_max']:.2f}"
            for peer, e in h.get("peers", {}).items()
        ),
        "",
    ]
    header = "| uplink Mbit/s | RTT ms | edge-only | cloud-only | planned (cut) | adaptive (cut) |"
    for m in results["models"]:
        cuts = ", ".join(m["served_cuts"])
        peers = [peer for peer in PEERS if any(peer in p.get("peers", {}) for p in m["points"])]
        lines += [
            f"**{m['model']}** ({m['nodes']} nodes; cuts served {cuts}), ms per request:",
            "",
            header + "".join(f" {PEERS[peer]} (cut) |" for peer in peers) + " oracle (cut) |",
            "|---:|---:|---:|---:|---:|---:|" + "---|" * len(peers) + "---:|",
        ]
        for p in m["points"]:
            cells = [
                str(p["uplink_mbit"]),
                str(p["rtt_ms"]),
                f"{p['edge_only_ms']:.1f}",
                f"{p['cloud_only_ms']:.1f}",
                f"{p['planned_ms']:.1f} ({p['planned_cut']})",
                f"{p['adaptive_ms']:.1f} ({p['adaptive_cut']})",
                *(_peer_cell(p["peers"].get(peer, {})) for peer in peers),
                f"{p['oracle_ms']:.1f} ({p['oracle_cut']})",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += [
            f"**{m['model']}**, device energy per request, mJ (edge-only / cloud-only / "
            "energy plan (cut) / least measured (cut)):",
            "",
            "| uplink Mbit/s | RTT ms | " + " | ".join(RADIOS) + " |",
            "|---:|---:|" + "---|" * len(RADIOS),
        ]
        for p in m["points"]:
            cells = [str(p["uplink_mbit"]), str(p["rtt_ms"])]
            for radio in RADIOS:
                e = p["energy"][radio]
                cells.append(
                    f"{e['edge_only_mj']:.0f} / {e['cloud_only_mj']:.0f} / "
                    f"{e['energy_plan_mj']:.0f} ({e['energy_plan_cut']}) / "
                    f"{e['oracle_mj']:.0f} ({e['oracle_cut']})"
                )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _peer_cell(measured: dict[str, Any]) -> str:
    if "measured_ms" in measured:
        return f"{measured['measured_ms']:.1f} ({measured['cut']})"
    return "n/a" if not measured else f"n/a ({measured['error']})"


def plot(model: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rtts = sorted({p["rtt_ms"] for p in model["points"]})
    figure, axes = plt.subplots(2, len(rtts), figsize=(5 * len(rtts), 7), squeeze=False)
    for column, rtt in enumerate(rtts):
        points = [p for p in model["points"] if p["rtt_ms"] == rtt]
        ups = [p["uplink_mbit"] for p in points]
        ax = axes[0][column]
        for key, label in (
            ("edge_only_ms", "edge-only"),
            ("cloud_only_ms", "cloud-only"),
            ("planned_ms", "planned"),
            ("adaptive_ms", "adaptive"),
            ("oracle_ms", "oracle"),
        ):
            ax.plot(ups, [p[key] for p in points], marker="o", label=label)
        for peer, name in PEERS.items():  # the peers' cuts, where they could plan
            if all("measured_ms" in p.get("peers", {}).get(peer, {}) for p in points):
                values = [p["peers"][peer]["measured_ms"] for p in points]
                ax.plot(ups, values, marker="x", linestyle="--", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{model['model']}, RTT {rtt} ms")
        ax.set_xlabel("uplink (Mbit/s)")
        ax.set_ylabel("latency per request (ms)")
        ax.legend(fontsize="small")
        cuts = model["plan_cuts"]
        ax = axes[1][column]
        ax.step(
            ups,
            [cuts.index(p["planned_cut"]) if p["planned_cut"] in cuts else -1 for p in points],
            where="mid",
        )
        ax.set_yticks(range(len(cuts)), cuts)
        ax.set_xscale("log")
        ax.set_xlabel("uplink (Mbit/s)")
        ax.set_ylabel("planned cut")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer links and requests")
    parser.add_argument("--models", default="mobilenet_v2,resnet50,vgg16,transformer")
    parser.add_argument("--slowdown", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency"))
    parser.add_argument(
        "--no-peers", action="store_true", help="leave out Neurosurgeon's and DADS's cuts"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    layers = None
    if not args.no_peers:
        from bench.peers import fit_predictors, measure_layers

        print("fitting Neurosurgeon's per-layer-type regressions on this machine", flush=True)
        layers = fit_predictors(measure_layers(args.quick))
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"{name}:", flush=True)
            models.append(measure_model(name.strip(), Path(tmp), args.slowdown, args.quick, layers))
    results = {
        "machine": machine(),
        "command": "python -m bench.latency " + " ".join(sys.argv[1:]),
        "slowdown": args.slowdown,
        "seconds": time.perf_counter() - started,
        "models": models,
        "headline": headline(models),
    }
    if layers is not None:
        results["neurosurgeon_predictors"] = layers.coefficients
    # strict JSON: a missed measurement (NaN) is written as null
    (args.out / "latency.json").write_text(
        json.dumps(_strict(results), indent=1, allow_nan=False) + "\n"
    )
    (args.out / "latency.md").write_text(markdown(results) + "\n")
    for model in models:
        plot(model, args.out / f"{model['model']}.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
