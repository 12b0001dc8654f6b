"""The minimum s–t cut planner equals brute force over every head set."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner import ModelGraph
from partitioner.mincut import CutCosts, head_cost, optimal_cut
from tests.graphs import FAMILIES
from tests.strategies import closed_heads, random_dags

cost = st.floats(0.0, 50.0, allow_nan=False)


@st.composite
def costed_dags(draw):
    graph = ModelGraph.load(draw(random_dags(max_nodes=9)))
    n = len(graph.nodes)
    keep_input = draw(st.booleans())
    send = {}
    for name in graph.consumers:
        forbidden = keep_input and name in graph.inputs
        send[name] = math.inf if forbidden else draw(cost)
    costs = CutCosts(
        edge=[draw(cost) for _ in range(n)],
        cloud=[draw(cost) for _ in range(n)],
        send=send,
        receive={o: draw(cost) for o in graph.outputs},
        rtt=draw(cost),
    )
    return graph, costs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=costed_dags())
def test_min_cut_equals_brute_force(case):
    graph, costs = case
    best = min(head_cost(graph, costs, h) for h in closed_heads(graph))
    found = optimal_cut(graph, costs)
    assert graph.is_closed(found.head)
    assert math.isclose(found.cost, head_cost(graph, costs, found.head), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(found.cost, best, rel_tol=1e-9, abs_tol=1e-9)


def _uniform(graph, edge, cloud, send_per_byte, rtt=0.0, keep_input=False):
    send = {}
    for name in graph.consumers:
        size = graph.spec(name).bytes_per_sample() or 0
        send[name] = math.inf if keep_input and name in graph.inputs else size * send_per_byte
    n = len(graph.nodes)
    return CutCosts(edge=[edge] * n, cloud=[cloud] * n, send=send, receive={}, rtt=rtt)


def test_fast_link_goes_to_the_cloud_slow_link_stays_on_the_device():
    graph = ModelGraph.load(FAMILIES["inception"]())
    fast = optimal_cut(graph, _uniform(graph, edge=10.0, cloud=1.0, send_per_byte=1e-6))
    assert fast.head == 0  # cloud-only
    slow = optimal_cut(graph, _uniform(graph, edge=10.0, cloud=1.0, send_per_byte=1.0))
    assert slow.head == graph.all_mask  # edge-only
    kept = optimal_cut(
        graph, _uniform(graph, edge=10.0, cloud=1.0, send_per_byte=1e-6, keep_input=True)
    )
    assert kept.head != 0 and graph.is_closed(kept.head)
