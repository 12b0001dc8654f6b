"""The planner: optimal on random DAGs, right where the arithmetic says, and within
what the user allows."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings

from partitioner.mincut import head_cost
from partitioner.plan import Constraints, Link, Planner, load_plan, sweep
from partitioner.profile import CodecCost
from runtime.errors import PlanError
from tests.profiles import additive_costs, chain_planner, synthetic_profile
from tests.strategies import closed_heads, planning_cases


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=planning_cases())
def test_the_plan_equals_brute_force_over_every_cut_and_codec(case):
    graph, edge, cloud, tensors, link, keep = case
    planner = Planner(
        graph,
        synthetic_profile(graph, "edge", edge, tensors),
        synthetic_profile(graph, "cloud", cloud, tensors),
    )
    choice = planner.choose(link, Constraints(keep_input_on_device=keep))
    best = min(
        head_cost(
            graph,
            additive_costs(graph, edge, cloud, tensors, label, link, keep_input_on_device=keep),
            head,
        )
        for label in ("raw", "zstd")
        for head in closed_heads(graph)
    )
    assert math.isclose(choice.best.total_ms, best, rel_tol=1e-9, abs_tol=1e-9)
    if keep:
        assert not set(choice.best.tensors) & set(graph.inputs)


def test_the_choice_moves_from_cloud_to_device_exactly_where_the_arithmetic_says():
    planner, a, b = chain_planner()
    # totals at u Mbit/s (bytes * 8e-3 / u ms), the 16-byte output returning likewise:
    #   cloud-only 3 + 800.128/u, after A 12 + 80.128/u, after B 21 + 8.128/u, edge-only 30
    crossings = {"cloud|A": 80.0, "A|B": 8.0, "B|edge": 8.128 / 9}
    sends = {"cloud": ("x",), "A": (a,), "B": (b,), "edge": ()}

    def best_at(mbit):
        return planner.choose(Link(mbit * 1e6, 0.0)).best.tensors

    for pair, at in crossings.items():
        faster, slower = pair.split("|")
        assert best_at(at * 1.01) == sends[faster]
        assert best_at(at * 0.99) == sends[slower]
    plan = sweep(planner, rtts_ms=[0.0], tolerance=0.0)
    tensors = {c["id"]: tuple(c["tensors"]) for c in plan.cuts}
    segments = [(tensors[s.cut], s.uplink_from_mbit, s.uplink_to_mbit) for s in plan.segments]
    assert [s[0] for s in segments] == [(), (b,), (a,), ("x",)]
    edges = [s[2] for s in segments[:-1]]
    for got, want in zip(
        edges, [crossings["B|edge"], crossings["A|B"], crossings["cloud|A"]], strict=True
    ):
        assert math.isclose(got, want, rel_tol=1e-9)


def test_keep_input_on_device_never_sends_the_input():
    planner, a, _ = chain_planner()
    fast = Link(1e9, 0.0)
    assert planner.choose(fast).best.tensors == ("x",)
    kept = planner.choose(fast, Constraints(keep_input_on_device=True))
    assert kept.best.tensors == (a,)
    assert all("x" not in p.tensors for p in kept.candidates)


def _lossy_chain(error):
    planner, a, b = chain_planner()
    graph = planner.graph
    tensors = {
        name: {"raw": CodecCost(size, 0.0, 0.0), "int8+zstd": CodecCost(size / 100, 0.0, 0.0)}
        for name, size in (("x", 100_000.0), (a, 10_000.0), (b, 1_000.0))
    }
    errors = {(cut, "int8+zstd"): error for cut in ("cloud", "c1", "c2")}
    return Planner(
        graph,
        synthetic_profile(graph, "edge", [10.0] * 3, tensors, errors=errors),
        synthetic_profile(graph, "cloud", [1.0] * 3, tensors, errors=errors),
    )


def test_max_error_admits_a_lossy_codec_only_within_its_bound():
    planner = _lossy_chain(error=0.02)
    link = Link(10e6, 0.0)
    assert all(p.codec in ("raw", "-") for p in planner.choose(link).candidates)
    assert planner.choose(link, Constraints(max_error=0.01)).best.codec == "raw"
    loose = planner.choose(link, Constraints(max_error=0.05))
    assert loose.best.codec == "int8+zstd" and loose.best.error == 0.02


def test_codecs_restricts_the_choice_and_an_unknown_one_is_an_error():
    planner = _lossy_chain(error=0.0)
    link = Link(10e6, 0.0)
    assert planner.choose(link, Constraints(max_error=1.0)).best.codec == "int8+zstd"
    only_raw = planner.choose(link, Constraints(codecs=frozenset({"raw"}), max_error=1.0))
    assert {p.codec for p in only_raw.candidates} <= {"raw", "-"}
    with pytest.raises(PlanError, match="unknown codec 'lz4'"):
        planner.choose(link, Constraints(codecs=frozenset({"lz4"})))
    with pytest.raises(PlanError, match="none of the codecs"):
        planner.choose(link, Constraints(codecs=frozenset({"fp16+zstd"})))


def test_the_plans_default_is_one_of_its_cuts_and_load_plan_checks_it(tmp_path):
    planner, _, _ = chain_planner()
    plan = sweep(planner, default=Link(500e6, 5.0))
    assert plan.default["cut"] in {c["id"] for c in plan.cuts}
    path = tmp_path / "plan.json"
    plan.save(path)
    assert load_plan(path) == plan
    raw = json.loads(path.read_text())
    raw["default"]["cut"] = "c999"
    path.write_text(json.dumps(raw))
    with pytest.raises(PlanError, match="default cut 'c999'"):
        load_plan(path)
    raw["default"]["cut"], raw["cuts"] = plan.default["cut"], []
    path.write_text(json.dumps(raw))
    with pytest.raises(PlanError, match="names no cut"):
        load_plan(path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=planning_cases())
def test_a_calls_own_cost_is_priced_in_every_split_and_the_min_cut(case):
    """A split call costs more than its round trip, compute and bytes: a fixed part
    and a part per tensor, in time and in bytes on the link both ways, paid by every
    split and never by edge-only. A run after idling costs more than a warm one: once
    per run, on each side that runs. The plan stays the optimum over every head with
    them."""
    import dataclasses

    graph, edge, cloud, tensors, link, keep = case
    cloud_profile = dataclasses.replace(
        synthetic_profile(graph, "cloud", cloud, tensors),
        call_ms=3.0,
        tensor_ms=0.7,
        cold_ms=1.5,
        call_bytes=90.0,
        tensor_bytes=26.0,
        answer_bytes=150.0,
    )
    edge_profile = dataclasses.replace(synthetic_profile(graph, "edge", edge, tensors), cold_ms=2.0)
    planner = Planner(graph, edge_profile, cloud_profile)
    choice = planner.choose(link, Constraints(keep_input_on_device=keep))
    best = math.inf
    for label in ("raw", "zstd"):
        costs = additive_costs(graph, edge, cloud, tensors, label, link, keep_input_on_device=keep)
        for head in closed_heads(graph):
            extra = 2.0 if head else 0.0  # the device runs a head, or everything
            if head != graph.all_mask:  # a call, and the cloud runs the tail
                crossing = graph.crossing(head)
                extra += 3.0 + 0.7 * len(crossing) + 1.5
                sent = 90.0 + sum(26.0 + len(name.encode()) for name in crossing)
                extra += link.up_ms(sent) + link.down_ms(150.0)
            best = min(best, head_cost(graph, costs, head) + extra)
    assert math.isclose(choice.best.total_ms, best, rel_tol=1e-9, abs_tol=1e-9)
    for p in choice.candidates:
        assert p.call_ms == (0.0 if p.cut == "edge" else 3.0 + 0.7 * len(p.tensors))
    # a stream's frames run back to back: its stages pay no run after idling
    warm = Planner(
        graph,
        synthetic_profile(graph, "edge", edge, tensors),
        dataclasses.replace(cloud_profile, cold_ms=0.0),
    )
    streamed = planner.choose(link, Constraints(keep_input_on_device=keep), "throughput")
    warm_streamed = warm.choose(link, Constraints(keep_input_on_device=keep), "throughput")
    assert streamed.best.predicted_fps == pytest.approx(warm_streamed.best.predicted_fps)
    # a link's own figures (measured through it) win over the profile's
    measured = Link(link.uplink_bps, link.rtt_ms, call_ms=1.0, tensor_ms=0.0)
    for p in planner.candidates(measured):
        assert p.call_ms == (0.0 if p.cut == "edge" else 1.0)
