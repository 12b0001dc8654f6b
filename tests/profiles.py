"""Synthetic profiles: costs chosen in the test, so the planner's answer can be worked out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from partitioner import ModelGraph, enumerate_cuts
from partitioner.graph import members
from partitioner.mincut import CutCosts
from partitioner.plan import Link, Planner
from partitioner.profile import CodecCost, CutProfile, OutputError, Profile, Timing
from partitioner.split import model_sha256
from runtime.power import PowerModel


def _t(ms: float) -> Timing:
    return Timing(ms, ms)


def synthetic_profile(
    graph: ModelGraph,
    device: str,
    node_ms: Sequence[float],
    tensor_costs: Mapping[str, Mapping[str, CodecCost]],
    *,
    errors: Mapping[tuple[str, str], float] | None = None,
    batch: int = 1,
) -> Profile:
    """Every cut of ``graph`` timed as the sum of its nodes' ``node_ms``.

    ``tensor_costs``: per tensor, per codec label, bytes and encode/decode ms.
    ``errors``: relative L2 output error per (cut id, lossy label).
    """
    errors = errors or {}
    cuts = []
    for cut in enumerate_cuts(graph, max_tensors=None):
        head = sum(node_ms[i] for i in members(cut.head))
        tail = sum(node_ms[i] for i in members(graph.all_mask & ~cut.head))
        labels = (
            set.intersection(*(set(tensor_costs[t]) for t in cut.tensor_names))
            if cut.tensors
            else {label for per in tensor_costs.values() for label in per}
        )
        codecs = {}
        for label in sorted(labels):
            parts = [tensor_costs[t][label] for t in cut.tensor_names]
            codecs[label] = CodecCost(
                sum(p.bytes for p in parts),
                sum(p.encode_ms for p in parts),
                sum(p.decode_ms for p in parts),
            )
        output_bytes = sum(
            float(graph.spec(o).bytes_per_sample() or 0) * batch for o in cut.tail_outputs
        )
        cuts.append(
            CutProfile(
                id=cut.id,
                tensors=cut.tensor_names,
                head_nodes=cut.head_nodes,
                head_ms=_t(head) if cut.head else None,
                tail_ms=_t(tail) if cut.head != graph.all_mask else None,
                bytes=codecs.get("raw", CodecCost(0, 0, 0)).bytes,
                output_bytes=output_bytes,
                codecs=codecs,
                errors={
                    label: OutputError(e, e, None)
                    for (cut_id, label), e in errors.items()
                    if cut_id == cut.id
                },
            )
        )
    return Profile(
        model=graph.name,
        sha256=model_sha256(graph.model),
        device=device,
        machine={},
        ort_version="synthetic",
        threads=1,
        slowdown=1.0,
        batch=batch,
        samples=1,
        full_ms=_t(sum(node_ms)),
        cuts=tuple(cuts),
        tensors={name: dict(per) for name, per in tensor_costs.items()},
    )


def additive_costs(
    graph: ModelGraph,
    edge_ms: Sequence[float],
    cloud_ms: Sequence[float],
    tensor_costs: Mapping[str, Mapping[str, CodecCost]],
    label: str,
    link: Link,
    *,
    keep_input_on_device: bool = False,
) -> CutCosts:
    """The same numbers as a min-cut cost model, for brute force to price every head."""
    send = {}
    for name in graph.consumers:
        cost = tensor_costs[name][label]
        forbidden = keep_input_on_device and name in graph.inputs
        send[name] = (
            float("inf") if forbidden else cost.encode_ms + link.up_ms(cost.bytes) + cost.decode_ms
        )
    receive = {o: link.down_ms(float(graph.spec(o).bytes_per_sample() or 0)) for o in graph.outputs}
    return CutCosts(list(edge_ms), list(cloud_ms), send, receive, link.rtt_ms)


def chain_planner(power: PowerModel | None = None) -> tuple[Planner, str, str]:
    """x -> A -> a -> B -> b -> C -> y, each node 10 ms on the device and 1 ms in the cloud;
    x is 100 kB, a 10 kB, b 1 kB, y 16 bytes (float32[N, 4]). The planner, a and b."""
    from tests.graphs import Builder

    builder = Builder("chain")
    x = builder.input("x", ["N", 4])
    a = builder.op("Relu", [x])
    b = builder.op("Tanh", [a])
    builder.output(builder.op("Sigmoid", [b]))
    graph = ModelGraph.load(builder.model())
    sizes = {x: 100_000.0, a: 10_000.0, b: 1_000.0}
    tensors = {name: {"raw": CodecCost(size, 0.0, 0.0)} for name, size in sizes.items()}
    planner = Planner(
        graph,
        synthetic_profile(graph, "edge", [10.0] * 3, tensors),
        synthetic_profile(graph, "cloud", [1.0] * 3, tensors),
        power=power,
    )
    return planner, a, b
