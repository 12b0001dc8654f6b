"""One cost model: the device prices every (cut, codec) as the planner does, from the
same profiles and the same link, latency and energy alike, on symmetric and
asymmetric links; and a term of the model (the answer's bytes on the downlink)
matters to the device's choice as it does to the plan's."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from partitioner import ModelGraph
from partitioner.cuts import EDGE_ONLY
from partitioner.plan import Link, Planner, sweep
from partitioner.profile import CodecCost
from runtime.cost import CallCosts, Parts
from runtime.device.costs import CostTable, PathCosts, plan_paths
from runtime.device.link import LinkEstimator
from runtime.device.options import EdgeOptions
from runtime.device.policy import Policy
from runtime.power import PowerModel
from tests import graphs
from tests.profiles import synthetic_profile

PHONE = PowerModel(
    compute_w=2.0, idle_w=0.5, uplink_mw_per_mbit=400.0, downlink_mw_per_mbit=50.0,
    radio_base_mw=1000.0,
)  # fmt: skip
LINKS = [
    Link(5e6, 30.0, 50e6),  # LTE-like: 5 Mbit/s up, 50 down
    Link(1e6, 80.0, 10e6),
    Link(20e6, 10.0),  # the downlink as the uplink
]


def _planner(model: object, seed: int = 0) -> Planner:
    """Made-up profiles of a real DAG: per-node times, two codecs, a call's own costs
    and runs after idling on both sides."""
    graph = ModelGraph.load(model)  # type: ignore[arg-type]
    rng = random.Random(seed)
    tensors = {}
    for name in graph.consumers:
        size = float(graph.spec(name).bytes_per_sample() or 1024)
        tensors[name] = {
            "raw": CodecCost(size, 0.0, 0.0),
            "zstd": CodecCost(
                size * rng.uniform(0.3, 0.9), rng.uniform(0.1, 2), rng.uniform(0.1, 1)
            ),
        }
    nodes = len(graph.nodes)
    edge = synthetic_profile(graph, "edge", [rng.uniform(1, 9) for _ in range(nodes)], tensors)
    cloud = synthetic_profile(graph, "cloud", [rng.uniform(0.1, 1) for _ in range(nodes)], tensors)
    edge = dataclasses.replace(edge, cold_ms=1.7)
    cloud = dataclasses.replace(
        cloud, cold_ms=0.9, call_ms=0.45, tensor_ms=0.07,
        call_bytes=90.0, tensor_bytes=26.0, answer_bytes=155.0,
    )  # fmt: skip
    return Planner(graph, edge, cloud, power=PHONE)


def _device(planner: Planner, plan: dict) -> tuple[Policy, CostTable]:
    """The device's policy and cost table as a runtime seeds them from ``plan``."""
    paths, local = plan_paths(plan)
    table = CostTable(clock=lambda: 100.0)
    for key, costs in paths.items():
        table.set(key, costs)
    assert local is not None
    table.local = local
    call = CallCosts.from_json(plan["constraints"]["call"])
    return Policy(EdgeOptions(power=PHONE), call), table


def _every_path_plan(planner: Planner) -> dict:
    """A plan (its JSON) carrying the parts of every profiled (cut, codec)."""
    cuts = []
    for cut_id in planner.profiled:
        labels = ["-"] if cut_id == EDGE_ONLY else list(planner.edge.cut(cut_id).codecs)
        parts = {k: planner.parts(cut_id, k) for k in labels}
        cuts.append({"id": cut_id, "parts": {k: p.to_json() for k, p in parts.items() if p}})
    plan = {"cuts": cuts, "constraints": {"call": planner.call.to_json()}}
    return json.loads(json.dumps(plan))  # as a manifest carries it


@pytest.mark.parametrize("model", [graphs.resnet, graphs.inception, graphs.densenet])
@pytest.mark.parametrize("link", LINKS, ids=["5up-50down", "1up-10down", "symmetric"])
def test_the_device_prices_every_cut_and_codec_as_the_planner(model, link):
    planner = _planner(model())
    policy, table = _device(planner, _every_path_plan(planner))
    snapshot = table.snapshot()
    # the device's estimate of this link, seeded with it
    estimate = LinkEstimator(
        uplink_bps=link.uplink_bps, rtt_ms=link.rtt_ms, downlink_bps=link.downlink_bps
    ).estimate()
    seen = estimate.link
    assert len(snapshot.paths) > 10
    for (cut_id, label), path in snapshot.paths.items():
        planned = planner.predict(cut_id, label, link)
        assert planned is not None and planned.energy_mj is not None
        assert math.isclose(policy.predict(snapshot, (cut_id, label), seen), planned.total_ms,
                            rel_tol=1e-6), (cut_id, label)  # fmt: skip
        assert math.isclose(policy.energy(path.parts, seen), planned.energy_mj, rel_tol=1e-6)
        stages = dataclasses.astuple(policy.stages(path.parts, seen))
        assert stages == pytest.approx(dataclasses.astuple(planned.stages), rel=1e-6)
    local = planner.predict(EDGE_ONLY, "-", link)
    assert local is not None and local.energy_mj is not None
    assert math.isclose(policy.local_ms(snapshot, seen), local.total_ms, rel_tol=1e-6)
    assert math.isclose(policy.energy(snapshot.local, seen), local.energy_mj, rel_tol=1e-6)


def test_a_swept_plan_carries_what_the_device_needs_to_price_its_cuts():
    planner = _planner(graphs.resnet(), seed=4)
    link = LINKS[0]
    plan = json.loads(json.dumps(sweep(planner, downlink_bps=link.downlink_bps).to_json()))
    policy, table = _device(planner, plan)
    snapshot = table.snapshot()
    served = {c["id"] for c in plan["cuts"]} - {EDGE_ONLY}
    assert served and {cut for cut, _ in snapshot.paths} == served
    for cut_id, label in snapshot.paths:
        planned = planner.predict(cut_id, label, link)
        assert planned is not None
        got = policy.predict(snapshot, (cut_id, label), link)
        assert math.isclose(got, planned.total_ms, rel_tol=1e-6)


def test_a_large_answer_on_a_fast_downlink_is_priced_at_the_downlink():
    """Two made-up paths: one sends 10 kB and gets 1 MB back, the other sends 200 kB
    and gets 1 kB back. At 5 Mbit/s up and 100 down the first is faster (16 + 80 ms
    against 320 ms); priced with the answer at the uplink's rate, as the device once
    did, it would cost 1.6 s and lose."""
    link = Link(5e6, 20.0, 100e6)
    table = CostTable(clock=lambda: 0.0)
    table.set(("mask", "raw"), PathCosts(5.0, up_bytes=10e3, down_bytes=1e6, tensors=("a",)))
    table.set(("late", "raw"), PathCosts(20.0, up_bytes=200e3, down_bytes=1e3, tensors=("b",)))
    table.local = PathCosts(2000.0)
    policy = Policy(EdgeOptions(deadline_ms=5000))
    snapshot = table.snapshot()
    assert policy.predict(snapshot, ("mask", "raw"), link) == pytest.approx(5 + 16 + 20 + 80)
    route = policy.choose(snapshot, link)
    assert route is not None and route.key == ("mask", "raw")


def test_parts_travel_through_json_unchanged():
    parts = Parts(edge_ms=1.5, encode_ms=0.25, sent_bytes=1e4, tensors=("a", "b"),
                  cloud_ms=3.0, decode_ms=0.5, output_bytes=40.0, edge_cold_ms=1.0,
                  cloud_cold_ms=0.5)  # fmt: skip
    assert Parts.from_json(json.loads(json.dumps(parts.to_json()))) == parts
    assert CallCosts.from_json(None) == CallCosts()
