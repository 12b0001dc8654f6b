"""The peers' planners, measured by the same clock as ours.

    .venv/bin/python -m bench.peers [--quick] [--models ...] [--out bench/results/peers]

Each peer's *planning method*, written here from its paper and its public code
(read, not copied):

* **Neurosurgeon** (Kang et al., ASPLOS 2017; public code ``Tjyy-1223/Neurosurgeon``):
  per-layer latency predicted by one linear regression per layer type and
  device, fitted on measurements of layers of that type on that device, with
  the features its ``predictor/`` uses (convolution: ``(HW/stride)^2`` and output
  channels; depthwise convolution: HW, kernel, stride, channels; linear: in and
  out features; max pooling: HW, kernel, stride, channels; average pooling: HW,
  output size, channels; batch normalization: HW, channels); activations,
  flatten, dropout (and a residual block's add, inside its block) cost nothing;
  any other layer type cannot be predicted. The split is a scan over the points
  of the layer chain (here: the prefixes of the node order crossed by exactly
  one tensor, no point right after an activation), pricing edge layers +
  the crossing tensor's bytes / bandwidth + cloud layers, with no round trip;
  the earliest of equals wins. The all-edge point still pays for sending the
  output, as in that code.
* **DADS** (Hu et al., INFOCOM 2019; public code ``Tjyy-1223/DADS``): each node's
  latency *measured* on each side (the node run alone), a minimum s-t cut of the
  DAG (source side: the device; a tensor read by several nodes paid once through
  an auxiliary vertex), transfer = the tensor's bytes / bandwidth, no round trip,
  outputs not sent back. The heavy-load variant (DSH, only in the paper) searches
  weights of the edge and cloud times, coarse to fine, for the cut whose slowest
  stage is fastest.

Both send raw tensors. Each returns a cut our runtime runs, so it is measured by
the same server, link emulator and emulated device as ours (StaticSplit, raw): the
measuring is the latency benchmark's (bench.latency.measure_model, which reports
the peers' cuts in its own tables too), on this benchmark's models and links.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from partitioner.cuts import CLOUD_ONLY, EDGE_ONLY, Cut, cut_from_tensors, make_cut
from partitioner.graph import ModelGraph, members
from partitioner.mincut import CutCosts, optimal_cut

# free layers (a residual block's add is inside its block, as in its models' containers)
NEUROSURGEON_FREE = frozenset(
    {"Relu", "Clip", "Flatten", "Dropout", "Identity", "Reshape", "Add", "Sum"}
)
ACTIVATIONS = frozenset({"Relu", "Clip", "Dropout"})  # no split point right after these
KINDS = ("conv", "dw_conv", "linear", "maxpool", "avgpool", "batchnorm")


class Unsupported(Exception):
    """A model the peer's method cannot plan (a layer type it cannot predict)."""


# --------------------------------------------------------------------------- layers


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shape(graph: ModelGraph, name: str) -> list[int]:
    spec = graph.spec(name)
    if spec.shape is None:
        raise Unsupported(f"tensor {name} has no known shape")
    return [d if isinstance(d, int) else 1 for d in spec.shape]


def _weight_shape(graph: ModelGraph, name: str) -> list[int] | None:
    weight = graph.weights.get(name)
    return list(weight.dims) if weight is not None else None


def layer_kind(graph: ModelGraph, index: int) -> str | None:
    """Neurosurgeon's layer type of a node: one of KINDS, None for a free layer;
    Unsupported for a type it has no predictor for."""
    node = graph.nodes[index].proto
    op = node.op_type
    if op in NEUROSURGEON_FREE:
        return None
    if op == "Conv":
        return "conv" if _attr(node, "group", 1) == 1 else "dw_conv"
    if op in ("Gemm", "MatMul") and len(_shape(graph, node.input[0])) == 2:
        return "linear"
    if op == "MaxPool":
        return "maxpool"
    if op in ("GlobalAveragePool", "AveragePool", "ReduceMean"):  # torch's adaptive pool
        return "avgpool"
    if op == "BatchNormalization":
        return "batchnorm"
    raise Unsupported(f"no predictor for a {op} layer")


def layer_features(graph: ModelGraph, index: int, kind: str) -> list[float]:
    """The features Neurosurgeon's regression for ``kind`` reads."""
    node = graph.nodes[index].proto
    shape = _shape(graph, node.input[0])
    hw = shape[2] if len(shape) == 4 else 1
    channels = shape[1] if len(shape) > 1 else 1
    if kind in ("conv", "dw_conv", "maxpool"):
        kernel = (_attr(node, "kernel_shape", None) or [1])[0]
        stride = (_attr(node, "strides", None) or [1])[0]
        if kind == "conv":
            out = _shape(graph, node.output[0])[1]
            return [(hw / stride) ** 2, out]
        return [hw, kernel, stride, channels]
    if kind == "linear":
        weight = _weight_shape(graph, node.input[1]) or _shape(graph, node.input[1])
        transposed = node.op_type == "Gemm" and _attr(node, "transB", 0)
        n_in, n_out = (weight[1], weight[0]) if transposed else (weight[0], weight[1])
        return [n_in, n_out]
    if kind == "avgpool":
        pooled = _shape(graph, node.output[0])
        return [hw, pooled[2] if len(pooled) == 4 else 1, channels]
    return [hw, channels]  # batchnorm


@dataclass
class LayerPredictors:
    """One linear regression (coefficients and intercept) per layer kind, for one
    device: what Neurosurgeon fits on the device's measurements."""

    coefficients: dict[str, tuple[list[float], float]]

    def predict(self, graph: ModelGraph, index: int) -> float:
        kind = layer_kind(graph, index)
        if kind is None:
            return 0.0
        weights, intercept = self.coefficients[kind]
        features = layer_features(graph, index, kind)
        value = intercept + sum(w * x for w, x in zip(weights, features, strict=True))
        return max(value, 0.0)  # a negative prediction is 0, as in its code

    def scaled(self, factor: float) -> LayerPredictors:
        return LayerPredictors(
            {k: ([w * factor for w in ws], b * factor) for k, (ws, b) in self.coefficients.items()}
        )


def fit_predictors(samples: dict[str, list[tuple[list[float], float]]]) -> LayerPredictors:
    """Least squares with an intercept per kind (sklearn's LinearRegression)."""
    from sklearn.linear_model import LinearRegression

    coefficients = {}
    for kind, rows in samples.items():
        x = np.array([features for features, _ in rows], dtype=np.float64)
        y = np.array([ms for _, ms in rows], dtype=np.float64)
        model = LinearRegression().fit(x, y)
        coefficients[kind] = ([float(c) for c in model.coef_], float(model.intercept_))
    return LayerPredictors(coefficients)


def layer_grid(quick: bool) -> dict[str, list[dict[str, int]]]:
    """The layers measured to fit each kind's regression (fewer with ``quick``)."""
    sizes = [7, 14, 28, 56] if quick else [7, 14, 28, 56, 112]
    widths = [16, 64] if quick else [16, 64, 256]
    grid: dict[str, list[dict[str, int]]] = {k: [] for k in KINDS}
    for hw in sizes:
        for k in (1, 3):
            for s in (1, 2):
                for cin in widths:
                    for cout in widths:
                        if hw * hw * k * k * cin * cout // (s * s) <= 2e8:
                            grid["conv"].append(dict(hw=hw, k=k, s=s, cin=cin, cout=cout))
                    grid["dw_conv"].append(dict(hw=hw, k=k + 2, s=s, cin=cin, cout=cin))
        for c in widths:
            grid["maxpool"].append(dict(hw=hw, k=3, s=2, cin=c, cout=c))
            grid["avgpool"].append(dict(hw=hw, k=hw, s=1, cin=c, cout=c))
            grid["batchnorm"].append(dict(hw=hw, k=1, s=1, cin=c, cout=c))
    for n_in in (256, 1024) if quick else (256, 1024, 4096):
        for n_out in (10, 256, 1000):
            grid["linear"].append(dict(hw=1, k=1, s=1, cin=n_in, cout=n_out))
    return grid


def _layer_model(kind: str, p: dict[str, int]) -> onnx.ModelProto:
    """One layer of ``kind`` as an ONNX model on a [1, C, HW, HW] input."""
    rng = np.random.default_rng(0)
    f32 = onnx.TensorProto.FLOAT
    inits, nodes = [], []

    def weight(name: str, shape: list[int]) -> str:
        inits.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        )
        return name

    if kind == "linear":
        x = helper.make_tensor_value_info("x", f32, [1, p["cin"]])
        nodes.append(helper.make_node("Gemm", ["x", weight("w", [p["cin"], p["cout"]])], ["y"]))
    else:
        x = helper.make_tensor_value_info("x", f32, [1, p["cin"], p["hw"], p["hw"]])
        if kind in ("conv", "dw_conv"):
            group = p["cin"] if kind == "dw_conv" else 1
            w = weight("w", [p["cout"], p["cin"] // group, p["k"], p["k"]])
            nodes.append(helper.make_node(
                "Conv", ["x", w], ["y"], kernel_shape=[p["k"]] * 2, strides=[p["s"]] * 2,
                pads=[p["k"] // 2] * 4, group=group,
            ))  # fmt: skip
        elif kind == "maxpool":
            nodes.append(helper.make_node(
                "MaxPool", ["x"], ["y"], kernel_shape=[p["k"]] * 2, strides=[p["s"]] * 2
            ))  # fmt: skip
        elif kind == "avgpool":
            nodes.append(helper.make_node("GlobalAveragePool", ["x"], ["y"]))
        else:
            c = p["cin"]
            names = [weight(n, [c]) for n in ("scale", "bias", "mean", "var")]
            inits[-1] = onnx.numpy_helper.from_array(np.ones(c, np.float32), "var")
            nodes.append(helper.make_node("BatchNormalization", ["x", *names], ["y"]))
    y = helper.make_tensor_value_info("y", f32, None)
    graph = helper.make_graph(nodes, kind, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def features_of(kind: str, p: dict[str, int]) -> list[float]:
    if kind == "conv":
        return [(p["hw"] / p["s"]) ** 2, p["cout"]]
    if kind in ("dw_conv", "maxpool"):
        return [p["hw"], p["k"], p["s"], p["cin"]]
    if kind == "linear":
        return [p["cin"], p["cout"]]
    if kind == "avgpool":
        return [p["hw"], 1, p["cin"]]
    return [p["hw"], p["cin"]]


def time_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], repeats: int) -> float:
    """The median ms of ``repeats`` runs after one, one ONNX Runtime thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_layers(quick: bool) -> dict[str, list[tuple[list[float], float]]]:
    """(features, ms) of every layer of the grid, measured on this machine."""
    samples: dict[str, list[tuple[list[float], float]]] = {k: [] for k in KINDS}
    for kind, params in layer_grid(quick).items():
        for p in params:
            shape = [1, p["cin"]] if kind == "linear" else [1, p["cin"], p["hw"], p["hw"]]
            feeds = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
            ms = time_model(_layer_model(kind, p), feeds, 3 if quick else 5)
            samples[kind].append((features_of(kind, p), ms))
    return samples


# --------------------------------------------------------------------------- Neurosurgeon


@dataclass(frozen=True)
class PeerChoice:
    """A peer's decision: the device side (a node bitmask) and what it predicted."""

    head: int
    predicted_ms: float


def tensor_bytes(graph: ModelGraph, name: str) -> float:
    return float(graph.spec(name).bytes_per_sample() or 0)


def neurosurgeon_choice(
    graph: ModelGraph, edge: LayerPredictors, cloud: LayerPredictors, uplink_bps: float
) -> PeerChoice:
    """Neurosurgeon's scan over the chain's split points: after k nodes of the node
    order, where exactly one tensor crosses (k = 0: the input, sent raw) and the k-th
    node is no activation; the all-edge point pays for sending the outputs. Unsupported
    when a layer type has no predictor."""
    n = len(graph.nodes)
    edge_ms = [edge.predict(graph, i) for i in range(n)]
    cloud_ms = [cloud.predict(graph, i) for i in range(n)]
    per_byte = 8 / uplink_bps * 1000
    best: PeerChoice | None = None
    for k in range(n + 1):
        head = (1 << k) - 1
        if k and graph.nodes[k - 1].proto.op_type in ACTIVATIONS and k < n:
            continue
        if k == n:
            sent = sum(tensor_bytes(graph, o) for o in graph.outputs)
        else:
            crossing = graph.crossing(head)
            if len(crossing) != 1 or graph.head_outputs(head):
                continue
            sent = tensor_bytes(graph, crossing[0])
        total = sum(edge_ms[:k]) + sent * per_byte + sum(cloud_ms[k:])
        if best is None or total < best.predicted_ms:
            best = PeerChoice(head, total)
    assert best is not None  # k = n always qualifies
    return best


# --------------------------------------------------------------------------- DADS


def node_model(graph: ModelGraph, index: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Node ``index`` alone as a model (its weights and constant nodes with it), and
    example inputs of its shapes: what DADS times for each layer."""
    from runtime.engine import example_feeds

    node = graph.nodes[index]
    constants = set(node.constants)
    needed_nodes: list[onnx.NodeProto] = []
    pending = [c for c in node.constants if c in graph.const_producer]
    while pending:
        proto = graph.const_nodes[graph.const_producer[pending.pop()]]
        if proto not in needed_nodes:
            needed_nodes.insert(0, proto)
            for r in proto.input:
                constants.add(r)
                if r in graph.const_producer:
                    pending.append(r)
    inits = [graph.weights[c] for c in constants if c in graph.weights]
    specs = [graph.spec(r) for r in node.reads]
    inputs = [
        helper.make_tensor_value_info(
            s.name,
            helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype)),
            None if s.shape is None else [d if isinstance(d, int) else 1 for d in s.shape],
        )
        for s in specs
    ]
    outputs = [helper.make_tensor_value_info(o, _elem(graph, o), None) for o in node.outputs]
    model = helper.make_model(
        helper.make_graph([*needed_nodes, node.proto], f"node{index}", inputs, outputs, inits),
        opset_imports=graph.model.opset_import,
    )
    model.ir_version = graph.model.ir_version
    return model, example_feeds(specs, batch=1, seed=index)


def _elem(graph: ModelGraph, name: str) -> int:
    dtype = graph.spec(name).dtype
    if not dtype or dtype == "unknown":
        return onnx.TensorProto.FLOAT
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def node_times(graph: ModelGraph, repeats: int) -> list[float]:
    """Each node's measured ms on this machine, run alone (DADS's per-layer profile)."""
    return [time_model(*node_model(graph, i), repeats) for i in range(len(graph.nodes))]


def dads_costs(
    graph: ModelGraph, edge_ms: Sequence[float], cloud_ms: Sequence[float], uplink_bps: float
) -> CutCosts:
    """DADS's graph: a node's cloud time when it runs there, its edge time when it runs
    here, a tensor's bytes / bandwidth once when it crosses; no round trip, outputs
    not sent back."""
    per_byte = 8 / uplink_bps * 1000
    send = {name: tensor_bytes(graph, name) * per_byte for name in graph.consumers}
    return CutCosts(list(edge_ms), list(cloud_ms), send, {}, 0.0)


def dads_choice(
    graph: ModelGraph, edge_ms: Sequence[float], cloud_ms: Sequence[float], uplink_bps: float
) -> PeerChoice:
    """DADS light load (DSL): the minimum cut of its graph."""
    cut = optimal_cut(graph, dads_costs(graph, edge_ms, cloud_ms, uplink_bps))
    return PeerChoice(cut.head, cut.cost)


def dads_stages(graph: ModelGraph, costs: CutCosts, head: int) -> tuple[float, float, float]:
    """(edge, transfer, cloud) time of a cut in DADS's graph."""
    edge = sum(costs.edge[i] for i in members(head))
    cloud = sum(costs.cloud[i] for i in members(graph.all_mask & ~head))
    transfer = sum(costs.send[t] for t in graph.crossing(head)) if head != graph.all_mask else 0.0
    return edge, transfer, cloud


def dads_heavy_choice(
    graph: ModelGraph,
    edge_ms: Sequence[float],
    cloud_ms: Sequence[float],
    uplink_bps: float,
    *,
    rounds: int = 3,
    steps: int = 8,
) -> PeerChoice:
    """DADS heavy load (DSH): minimum cuts of the graph with the edge and cloud times
    weighted by (alpha, beta), the transfer by 1, searched coarse to fine for the cut
    whose slowest stage is fastest; ``predicted_ms`` is that stage's time."""
    costs = dads_costs(graph, edge_ms, cloud_ms, uplink_bps)

    def slowest(head: int) -> float:
        return max(dads_stages(graph, costs, head))

    def cut(alpha: float, beta: float) -> int:
        weighted = CutCosts(
            [alpha * t for t in costs.edge], [beta * t for t in costs.cloud], costs.send, {}, 0.0
        )
        return optimal_cut(graph, weighted).head

    best = optimal_cut(graph, costs).head  # alpha = beta = 1: the light-load cut
    low, high = math.log(1e-3), math.log(1e3)
    center = (0.0, 0.0)
    for _ in range(rounds):
        grid = np.linspace(low, high, steps)
        for a in grid:
            for b in grid:
                head = cut(math.exp(center[0] + a), math.exp(center[1] + b))
                if slowest(head) < slowest(best):
                    best = head
                    center = (center[0] + a, center[1] + b)
        low, high = low / steps, high / steps
    return PeerChoice(best, slowest(best))


def peer_cut(graph: ModelGraph, head: int) -> Cut:
    """The cut a peer chose, as our runtime serves it: "edge", "cloud", or the cut of
    the tensors it sends (any closed head: a min-cut's may be no enumerated cut)."""
    if head == graph.all_mask:
        return make_cut(graph, head, EDGE_ONLY)
    if head == 0:
        return make_cut(graph, head, CLOUD_ONLY)
    return cut_from_tensors(graph, graph.crossing(head), device_outputs=graph.head_outputs(head))


def peer_cut_id(graph: ModelGraph, head: int) -> str:
    """Our id of the cut a peer chose."""
    return peer_cut(graph, head).id


def peer_decisions(
    graph: ModelGraph,
    layers: LayerPredictors,
    factor: float,
    uplinks: Sequence[float],
    quick: bool = False,
) -> dict[str, dict[float, PeerChoice] | str]:
    """Each peer's decision per uplink (Mbit/s), from its own inputs measured here: DADS's
    per-node times, Neurosurgeon's per-type predictors (``layers``, fitted here); the
    device is this machine ``factor`` times slower. A peer that cannot plan the model
    gets the reason instead."""
    node_cloud = node_times(graph, 3 if quick else 5)
    node_edge = [t * factor for t in node_cloud]
    peers: dict[str, dict[float, PeerChoice] | str] = {}
    try:
        peers["neurosurgeon"] = {
            up: neurosurgeon_choice(graph, layers.scaled(factor), layers, up * 1e6)
            for up in uplinks
        }
    except Unsupported as exc:
        peers["neurosurgeon"] = f"cannot plan it: {exc}"
    peers["dads"] = {up: dads_choice(graph, node_edge, node_cloud, up * 1e6) for up in uplinks}
    return peers


def peer_cuts(
    graph: ModelGraph, peers: dict[str, dict[float, PeerChoice] | str], uplink: float
) -> dict[str, Cut]:
    """Each peer's cut at ``uplink``, for the peers that could plan."""
    return {
        peer: peer_cut(graph, c[uplink].head) for peer, c in peers.items() if isinstance(c, dict)
    }


# --------------------------------------------------------------------------- the benchmark

UPLINKS = (5, 25, 100, 1000)
RTTS = (5, 40)
QUICK_UPLINKS = (10, 1000)
QUICK_RTTS = (5,)
ZOO = ("light_squeezenet", "light_inception_v1", "light_resnet50", "light_shufflenet")
MODELS = ("mobilenet_v2", "resnet50", "vgg16", "transformer", *ZOO)


def headline(models: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.latency import geomean

    per_model = {}
    worst_vs_oracle, worst_vs_peer = 0.0, 0.0
    for m in models:
        row: dict[str, Any] = {}
        for peer in ("neurosurgeon", "dads"):
            ratios = [
                p["peers"][peer]["measured_ms"] / p["planned_ms"]
                for p in m["points"]
                if "measured_ms" in p["peers"].get(peer, {})
            ]
            row[f"speedup_vs_{peer}_geomean"] = geomean(ratios) if ratios else None
            errors = [
                abs(p["peers"][peer]["predicted_ms"] - p["peers"][peer]["measured_ms"])
                / p["peers"][peer]["measured_ms"]
                for p in m["points"]
                if "measured_ms" in p["peers"].get(peer, {})
            ]
            row[f"{peer}_prediction_error_median"] = statistics.median(errors) if errors else None
            for p in m["points"]:
                if "measured_ms" in p["peers"].get(peer, {}):
                    worst_vs_peer = max(
                        worst_vs_peer, p["planned_ms"] / p["peers"][peer]["measured_ms"]
                    )
        ours = [abs(p["predicted_ms"] - p["planned_ms"]) / p["planned_ms"] for p in m["points"]]
        row["ours_prediction_error_median"] = statistics.median(ours) if ours else None
        for p in m["points"]:
            worst_vs_oracle = max(worst_vs_oracle, p["planned_ms"] / p["oracle_ms"])
        per_model[m["model"]] = row
    return {
        "models": per_model,
        "planned_over_oracle_max": worst_vs_oracle,
        "planned_over_best_peer_max": worst_vs_peer,
    }


def markdown(results: dict[str, Any]) -> str:
    h = results["headline"]
    lines = [
        f"- ours (planned) / oracle, worst point: {h['planned_over_oracle_max']:.3f}",
        f"- ours / a peer's measured cut, worst point: {h['planned_over_best_peer_max']:.3f}",
        "",
        "| model | speed-up vs Neurosurgeon (x, geomean) | vs DADS (x) | prediction error, median: "
        "ours / Neurosurgeon / DADS |",
        "|---|---:|---:|---|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for name, row in h["models"].items():
        lines.append(
            f"| {name} | {fmt(row['speedup_vs_neurosurgeon_geomean'], '.2f')} | "
            f"{fmt(row['speedup_vs_dads_geomean'], '.2f')} | "
            f"{fmt(row['ours_prediction_error_median'], '.0%')} / "
            f"{fmt(row['neurosurgeon_prediction_error_median'], '.0%')} / "
            f"{fmt(row['dads_prediction_error_median'], '.0%')} |"
        )
    lines.append("")
    for m in results["models"]:
        lines += [
            f"**{m['model']}** ({m['nodes']} nodes), ms per request, measured (cut):",
            "",
            "| uplink Mbit/s | RTT ms | ours planned | adaptive | Neurosurgeon | DADS | oracle |",
            "|---:|---:|---|---:|---|---|---|",
        ]
        for p in m["points"]:
            peers = []
            for peer in ("neurosurgeon", "dads"):
                v = p["peers"][peer]
                peers.append(
                    f"{v['measured_ms']:.1f} ({v['cut']})" if "cut" in v else "n/a: " + v["error"]
                )
            lines.append(
                f"| {p['uplink_mbit']} | {p['rtt_ms']} | "
                f"{p['planned_ms']:.1f} ({p['planned_cut']}) "
                f"| {p['adaptive_ms']:.1f} | {peers[0]} | {peers[1]} | "
                f"{p['oracle_ms']:.1f} ({p['oracle_cut']}) |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    import argparse
    import json
    import sys
    import tempfile
    from pathlib import Path

    from bench.latency import _strict, measure_model, plot
    from bench.processes import machine

    parser = argparse.ArgumentParser(description="the peers' planners, measured beside ours")
    parser.add_argument("--quick", action="store_true", help="the tiny model, two links")
    parser.add_argument("--models", default=None, help=f"default: {','.join(MODELS)}")
    parser.add_argument("--slowdown", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/peers"))
    args = parser.parse_args()
    names = (args.models or ("tiny" if args.quick else ",".join(MODELS))).split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print("fitting Neurosurgeon's per-layer-type regressions on this machine", flush=True)
    layers = fit_predictors(measure_layers(args.quick))
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        links = (QUICK_UPLINKS, QUICK_RTTS) if args.quick else (UPLINKS, RTTS)
        for name in names:
            print(f"{name}:", flush=True)
            model = measure_model(name.strip(), Path(tmp), args.slowdown, args.quick, layers, links)
            models.append(model)
    results = {
        "machine": machine(),
        "command": "python -m bench.peers " + " ".join(sys.argv[1:]),
        "slowdown": args.slowdown,
        "seconds": time.perf_counter() - started,
        "neurosurgeon_predictors": layers.coefficients,
        "models": models,
    }
    results["headline"] = headline(models)
    (args.out / "peers.json").write_text(json.dumps(_strict(results), indent=1) + "\n")
    (args.out / "peers.md").write_text(markdown(results) + "\n")
    for model in models:
        plot(model, args.out / f"{model['model']}.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    # run as bench.peers, the module bench.latency imports: one Unsupported class for
    # the predictors fitted here and the planning that catches it
    from bench import peers

    raise SystemExit(peers.main())
