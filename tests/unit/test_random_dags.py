"""Property tests on random DAGs, checked against brute force over every head set."""

from __future__ import annotations

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner import ModelGraph, cut_from_tensors, enumerate_cuts, write_artifacts
from partitioner.graph import members
from runtime.errors import CutError
from tests.graphs import assert_recomposes
from tests.strategies import brute_crossing, closed_heads, random_dags

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
