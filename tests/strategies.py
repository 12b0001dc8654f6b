"""Hypothesis strategies for random ONNX DAGs, and brute force over their cuts."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from hypothesis import strategies as st

from partitioner import ModelGraph
from partitioner.plan import Link
from partitioner.profile import CodecCost
from tests.graphs import Builder

UNARY = ["Relu", "Neg", "Tanh", "Sigmoid", "Abs"]
BINARY = ["Add", "Mul", "Sub", "Max"]


@st.composite
def random_dags(draw, max_nodes: int = 10) -> onnx.ModelProto:
    """Random DAGs over [N, 4] float tensors: elementwise ops, MatMuls with weights,
    weights made by ConstantOfShape, and two-output Split nodes."""
    b = Builder("random", seed=draw(st.integers(0, 2**16)))
    pool = [b.input(f"x{i}", ["N", 4]) for i in range(draw(st.integers(1, 2)))]
    made: list[str] = []
    for _ in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(["unary", "binary", "matmul", "computed", "split"]))
        pick = st.sampled_from(pool)
        if kind == "unary":
            out = b.op(draw(st.sampled_from(UNARY)), [draw(pick)])
        elif kind == "binary":
            out = b.op(draw(st.sampled_from(BINARY)), [draw(pick), draw(pick)])
        elif kind == "matmul":
            out = b.op("MatMul", [draw(pick), b.weight([4, 4])])
        elif kind == "computed":
            filled = b.op(
                "ConstantOfShape",
                [b.const([4])],
                value=onnx.numpy_helper.from_array(np.array([0.5], np.float32)),
            )
            out = b.op("Add", [draw(pick), filled])
        else:
            left, right = b.multi("Split", [draw(pick)], 2, axis=1, num_outputs=2)
            out = b.op("Concat", [right, left], axis=1)
        pool.append(out)
        made.append(out)
    outputs = draw(st.lists(st.sampled_from(made), min_size=0, max_size=2, unique=True))
    for name in dict.fromkeys([*outputs, made[-1]]):
        b.output(name)
    return b.model(opset=18)


def closed_heads(graph: ModelGraph):
    """Every predecessor-closed head set, by brute force."""
    for size in range(len(graph.nodes) + 1):
        for nodes in itertools.combinations(range(len(graph.nodes)), size):
            head = sum(1 << i for i in nodes)
            if all(graph.pred_mask[i] & ~head == 0 for i in nodes):
                yield head


def brute_crossing(graph: ModelGraph, head: int) -> frozenset[str]:
    crossing = set()
    for node in graph.nodes:
        if head >> node.index & 1:
            continue
        for name in node.reads:
            p = graph.producer.get(name)
            if p is None or head >> p & 1:
                crossing.add(name)
    return frozenset(crossing)


ms = st.floats(0.0, 20.0, allow_nan=False)


@st.composite
def planning_cases(draw):
    """A random DAG with per-node times on each side, raw and zstd costs for every
    tensor, a link, and whether the input must stay on the device."""
    graph = ModelGraph.load(draw(random_dags(max_nodes=8)))
    n = len(graph.nodes)
    edge = [draw(ms) for _ in range(n)]
    cloud = [draw(ms) for _ in range(n)]
    tensors = {}
    for name in graph.consumers:
        raw = draw(st.floats(1.0, 1e6))
        tensors[name] = {
            "raw": CodecCost(raw, 0.0, 0.0),
            "zstd": CodecCost(raw * draw(st.floats(0.05, 1.0)), draw(ms), draw(ms)),
        }
    link = Link(draw(st.floats(1e5, 1e9)), draw(st.floats(0.0, 100.0)))
    keep = draw(st.booleans())
    return graph, edge, cloud, tensors, link, keep
