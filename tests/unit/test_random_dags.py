"""Property tests on random DAGs, checked against brute force over every head set."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner import ModelGraph, cut_from_tensors, enumerate_cuts, write_artifacts
from partitioner.graph import members
from runtime.errors import CutError
from tests.graphs import Builder, assert_recomposes

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


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(model=random_dags())
def test_every_enumerated_cut_is_a_separator_and_recomposes(model, tmp_path_factory):
    graph = ModelGraph.load(model)
    cuts = enumerate_cuts(graph, max_tensors=None)
    for cut in cuts:
        assert graph.is_closed(cut.head)
        assert frozenset(cut.tensor_names) == brute_crossing(graph, cut.head)
        produced_by_head = {o for i in members(cut.head) for o in graph.nodes[i].outputs}
        assert set(cut.head_outputs) <= produced_by_head | graph.constants
    directory = tmp_path_factory.mktemp("dag")
    manifest = write_artifacts(graph, cuts, directory)
    for written in manifest.cuts:
        for side in (written.head, written.tail):
            if side is not None:
                onnx.checker.check_model(str(directory / side), full_check=True)
    assert_recomposes(model, directory, manifest, batch=3)


@SETTINGS
@given(model=random_dags(max_nodes=8), data=st.data())
def test_a_tensor_list_is_accepted_exactly_when_some_cut_sends_it(model, data, tmp_path_factory):
    graph = ModelGraph.load(model)
    achievable = {brute_crossing(graph, h): h for h in closed_heads(graph)}
    candidates = sorted(graph.consumers)
    chosen = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
    try:
        cut = cut_from_tensors(graph, chosen)
    except CutError:
        assert frozenset(chosen) not in achievable
        return
    assert frozenset(chosen) in achievable
    assert frozenset(cut.tensor_names) == frozenset(chosen) == brute_crossing(graph, cut.head)
    assert graph.is_closed(cut.head)
    directory = tmp_path_factory.mktemp("cut")
    assert_recomposes(model, directory, write_artifacts(graph, [cut], directory))


@SETTINGS
@given(model=random_dags(max_nodes=8))
def test_every_single_tensor_cut_is_enumerated(model):
    graph = ModelGraph.load(model)
    singles = {c for c in (brute_crossing(graph, h) for h in closed_heads(graph)) if len(c) == 1}
    found = {frozenset(c.tensor_names) for c in enumerate_cuts(graph, max_tensors=1)}
    assert singles <= found
