"""The peers' planners (bench/peers.py) reproduce decisions computed by hand, so the
baselines of the peer benchmark are faithful, not straw men."""

from __future__ import annotations

import math

import pytest

from bench.peers import (
    LayerPredictors,
    Unsupported,
    dads_choice,
    dads_costs,
    dads_heavy_choice,
    dads_stages,
    fit_predictors,
    neurosurgeon_choice,
    peer_cut_id,
)
from partitioner import ModelGraph
from partitioner.mincut import head_cost
from tests.graphs import Builder
from tests.strategies import closed_heads


def _chain() -> ModelGraph:
    """x[N,4] -> Gemm(4x8) -> a -> Relu -> b -> Gemm(8x2) -> y: 16, 32, 32 and 8 bytes."""
    builder = Builder("peer_chain")
    x = builder.input("x", ["N", 4])
    a = builder.op("Gemm", [x, builder.weight([4, 8])])
    b = builder.op("Relu", [a])
    builder.output(builder.op("Gemm", [b, builder.weight([8, 2])]))
    return ModelGraph.load(builder.model())


# a linear layer costs its input features in ms on the device, a tenth of that in the cloud
EDGE = LayerPredictors({"linear": ([1.0, 0.0], 0.0)})
CLOUD = EDGE.scaled(0.1)


def test_neurosurgeon_scans_the_chain_as_its_paper_prices_it():
    graph = _chain()
    # uplink 1 kbit/s: 8 ms a byte. Points: the input (16 B: 128 ms + cloud 0.4 + 0.8),
    # after the first Gemm (32 B: 4 + 256 + 0.8), after Relu (skipped: an activation),
    # all on the device (4 + 8, and the 8-byte output sent: 64)
    slow = neurosurgeon_choice(graph, EDGE, CLOUD, 1e3)
    assert slow.head == graph.all_mask and math.isclose(slow.predicted_ms, 76.0)
    # 100 kbit/s: 0.08 ms a byte; the input: 1.28 + 1.2 = 2.48 ms, the best
    fast = neurosurgeon_choice(graph, EDGE, CLOUD, 1e5)
    assert fast.head == 0 and math.isclose(fast.predicted_ms, 2.48)
    assert peer_cut_id(graph, fast.head) == "cloud" and peer_cut_id(graph, slow.head) == "edge"
    # 20 kbit/s: 0.4 ms a byte: input 6.4 + 1.2 = 7.6; after A 4 + 12.8 + 0.8 = 17.6;
    # all here 12 + 3.2 = 15.2
    assert neurosurgeon_choice(graph, EDGE, CLOUD, 2e4).head == 0


def test_neurosurgeon_splits_a_dag_only_where_one_tensor_crosses_and_refuses_unknown_layers():
    builder = Builder("peer_residual")
    x = builder.input("x", ["N", 4])
    a = builder.op("Gemm", [x, builder.weight([4, 4])])
    b = builder.op("Gemm", [a, builder.weight([4, 4])])
    y = builder.op("Add", [a, b])  # a residual: after b, both a and b cross
    builder.output(builder.op("Gemm", [y, builder.weight([4, 2])]))
    graph = ModelGraph.load(builder.model())
    everywhere = LayerPredictors({"linear": ([0.0, 0.0], 1.0)})  # 1 ms a layer here
    free = LayerPredictors({"linear": ([0.0, 0.0], 0.0)})  # nothing in the cloud
    choices = {neurosurgeon_choice(graph, everywhere, free, bps).head for bps in (1e2, 1e9)}
    for head in choices:  # every point it takes is a single-tensor one
        assert head == graph.all_mask or len(graph.crossing(head)) == 1
    builder = Builder("peer_softmax")
    x = builder.input("x", ["N", 4])
    builder.output(builder.op("Softmax", [builder.op("Gemm", [x, builder.weight([4, 4])])]))
    with pytest.raises(Unsupported, match="no predictor for a Softmax layer"):
        neurosurgeon_choice(ModelGraph.load(builder.model()), EDGE, CLOUD, 1e6)


def test_neurosurgeon_fits_one_linear_regression_per_layer_type():
    rows = [([float(n), 2.0 * n], 3.0 + 0.5 * n + 0.25 * (2.0 * n)) for n in range(1, 9)]
    fitted = fit_predictors({"linear": rows})
    graph = _chain()
    # the first Gemm: 4 in, 8 out; the fit recovers any exact linear law on its features
    weights, intercept = fitted.coefficients["linear"]
    want = intercept + weights[0] * 4 + weights[1] * 8
    assert math.isclose(fitted.predict(graph, 0), want, rel_tol=1e-9)
    assert math.isclose(3.0 + 0.5 * 4 + 0.25 * 8, want, rel_tol=1e-6)


def _diamond() -> tuple[ModelGraph, list[float], list[float]]:
    """x -> A -> a; a -> B -> b; a -> C -> c; (b, c) -> D -> y, every tensor [N, 4]."""
    builder = Builder("peer_diamond")
    x = builder.input("x", ["N", 4])
    a = builder.op("Relu", [x])
    b = builder.op("Tanh", [a])
    c = builder.op("Sigmoid", [a])
    builder.output(builder.op("Add", [b, c]))
    graph = ModelGraph.load(builder.model())
    return graph, [10.0, 10.0, 10.0, 1.0], [1.0, 1.0, 1.0, 1.0]


def test_dads_takes_the_minimum_cut_of_its_graph():
    graph, edge, cloud = _diamond()
    # 16 bytes a tensor. At 1 Mbit/s a tensor takes 0.128 ms: everything in the cloud
    # (send x: 0.128 + 4 ms) beats any split (A here: 10 + a once, 0.128, + 3 ms)
    fast = dads_choice(graph, edge, cloud, 1e6)
    assert fast.head == 0 and math.isclose(fast.predicted_ms, 4.128)
    # at 1 kbit/s a tensor takes 128 ms: everything here, 31 ms, nothing sent back
    slow = dads_choice(graph, edge, cloud, 1e3)
    assert slow.head == graph.all_mask and math.isclose(slow.predicted_ms, 31.0)
    # and in between, the optimum over every closed head of DADS's own objective,
    # with a, read by B and C, paid once
    for bps in (2e3, 5e3, 1e4, 3e4):
        costs = dads_costs(graph, edge, cloud, bps)
        want = min(head_cost(graph, costs, h) for h in closed_heads(graph))
        assert math.isclose(dads_choice(graph, edge, cloud, bps).predicted_ms, want)


def test_dads_heavy_load_searches_weighted_cuts_for_the_slowest_stage():
    """DSH reweights the device and cloud times and keeps the min-cut whose slowest
    stage is fastest: better than the light-load cut for a stream."""
    builder = Builder("peer_heavy")
    x = builder.input("x", ["N", 20])  # 80 bytes: 5 ms at 128 kbit/s
    a = builder.op("Gemm", [x, builder.weight([20, 4])])  # a and b: 16 bytes, 1 ms
    b = builder.op("Relu", [a])
    builder.output(builder.op("Tanh", [b]))
    graph = ModelGraph.load(builder.model())
    edge, cloud, bps = [1.0, 4.0, 10.0], [3.0, 3.0, 3.0], 128e3
    costs = dads_costs(graph, edge, cloud, bps)
    # light load: A here, a sent, B and C there: 1 + 1 + 6 = 8 ms (A and B here: 9),
    # whose slowest stage is the cloud's 6 ms
    light = dads_choice(graph, edge, cloud, bps)
    assert light.head == 0b001 and math.isclose(light.predicted_ms, 8.0)
    assert max(dads_stages(graph, costs, light.head)) == 6.0
    # heavy load: A and B here (5, 1, 3): 5 ms a frame, the best of every closed head
    heavy = dads_heavy_choice(graph, edge, cloud, bps)
    assert heavy.head == 0b011 and math.isclose(heavy.predicted_ms, 5.0)
    assert heavy.predicted_ms == min(max(dads_stages(graph, costs, h)) for h in closed_heads(graph))


def test_dads_heavy_load_is_not_exact_where_no_weighting_makes_the_optimum_a_min_cut():
    """The bottleneck cut is NP-hard: on this diamond no weighted sum makes the best
    split a minimum cut, so DSH stays with a whole side (16 ms a frame), while
    splitinfer's exact search finds A and B here (8 ms)."""
    from partitioner.mincut import StageCosts, bottleneck_cut

    graph, _, _ = _diamond()
    edge, cloud, bps = [4.0] * 4, [4.0] * 4, 16 * 8 / 2e-3  # 2 ms a tensor
    costs = dads_costs(graph, edge, cloud, bps)
    assert dads_heavy_choice(graph, edge, cloud, bps).predicted_ms == 16.0
    zero = dict.fromkeys(costs.send, 0.0)
    ours = bottleneck_cut(graph, StageCosts(edge, cloud, zero, dict(costs.send), zero, {}))
    assert ours.proven and ours.value == 8.0
