"""The throughput objective: the bottleneck cut equals brute force on random DAGs (where
no weighted min-cut finds it too), the planner picks the most frames per second where
the arithmetic says, and the command line reports it."""

from __future__ import annotations

import dataclasses
import json
import math

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner import ModelGraph, enumerate_cuts
from partitioner.cli import main
from partitioner.mincut import StageCosts, bottleneck_cut, head_stages, optimal_cut
from partitioner.plan import Constraints, Link, Planner, load_plan, sweep
from partitioner.profile import CodecCost, Profile
from runtime.errors import PlanError
from tests.graphs import Builder
from tests.profiles import synthetic_profile
from tests.strategies import brute_crossing, closed_heads, planning_cases, random_dags

cost = st.floats(0.0, 50.0, allow_nan=False)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def slowest_by_hand(graph: ModelGraph, costs: StageCosts, head: int) -> float:
    """max(D, U, C, R) of one head, from the definitions (not from head_stages)."""
    tail = [n.index for n in graph.nodes if not head >> n.index & 1]
    sent = brute_crossing(graph, head)
    device = sum(costs.edge[n.index] for n in graph.nodes if head >> n.index & 1)
    device += sum(costs.encode[x] for x in sent)
    uplink = sum(costs.transfer[x] for x in sent)
    cloud = (sum(costs.cloud[i] for i in tail) + sum(costs.decode[x] for x in sent)) / costs.workers
    downlink = sum(
        costs.receive[o] for o in graph.outputs if o in graph.producer and graph.producer[o] in tail
    )
    return max(device, uplink, cloud, downlink)


def brute_force(graph: ModelGraph, costs: StageCosts) -> float:
    return min(slowest_by_hand(graph, costs, head) for head in closed_heads(graph))


@st.composite
def staged_dags(draw):
    graph = ModelGraph.load(draw(random_dags(max_nodes=9)))
    n = len(graph.nodes)
    keep_input = draw(st.booleans())
    transfer = {}
    for name in graph.consumers:
        forbidden = keep_input and name in graph.inputs
        transfer[name] = math.inf if forbidden else draw(cost)
    costs = StageCosts(
        edge=[draw(cost) for _ in range(n)],
        cloud=[draw(cost) for _ in range(n)],
        encode={name: draw(cost) for name in graph.consumers},
        transfer=transfer,
        decode={name: draw(cost) for name in graph.consumers},
        receive={o: draw(cost) for o in graph.outputs},
        workers=draw(st.integers(1, 3)),
    )
    return graph, costs


@SETTINGS
@given(case=staged_dags())
def test_the_bottleneck_cut_equals_brute_force(case):
    graph, costs = case
    found = bottleneck_cut(graph, costs)
    assert found.proven and graph.is_closed(found.head)
    assert math.isclose(found.value, brute_force(graph, costs), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(
        found.value, slowest_by_hand(graph, costs, found.head), rel_tol=1e-9, abs_tol=1e-9
    )
    assert found.stages == head_stages(graph, costs, found.head)
    assert math.isfinite(found.value)  # edge-only sends nothing, so it is always possible


def _partition():
    """PARTITION in disguise: five independent nodes reading a free input, of 3, 3, 2, 2
    and 2 ms on the device and a few percent more in the cloud. Splitting them 6 ms to
    6 ms is best; a weighted sum of the stages sends each node to the side where its
    weighted cost is lower, so its min-cuts only ever move the nodes across in one order
    (3b, 2b, 2a, 3a, 2c), and no prefix of that order is a balanced split."""
    builder = Builder("partition")
    x = builder.input("x", ["N", 4])
    for op in ("Relu", "Neg", "Tanh", "Sigmoid", "Abs"):
        builder.output(builder.op(op, [x]))
    graph = ModelGraph.load(builder.model())
    edge = [3.0, 3.0, 2.0, 2.0, 2.0]
    extra = [1.04, 1.01, 1.03, 1.02, 1.05]
    free = {name: 0.0 for name in graph.consumers}
    costs = StageCosts(
        edge=edge,
        cloud=[e * k for e, k in zip(edge, extra, strict=True)],
        encode=free,
        transfer=free,
        decode=free,
        receive={o: 0.0 for o in graph.outputs},
    )
    return graph, costs


def test_the_optimum_can_be_a_cut_that_no_weighted_min_cut_finds():
    graph, costs = _partition()
    best = brute_force(graph, costs)
    assert best < 6.2
    steps = [k / 20 for k in range(21)]
    for device in steps:
        for cloud in steps:
            head = optimal_cut(graph, costs.weighted(device, 0.5, cloud, 0.5)).head
            assert slowest_by_hand(graph, costs, head) >= 7.0, (device, cloud)
    found = bottleneck_cut(graph, costs)
    assert found.proven and math.isclose(found.value, best, rel_tol=1e-12)
    assert found.stages.device_ms == 6.0


def test_a_search_out_of_budget_returns_its_best_and_says_it_is_not_proven():
    graph, costs = _partition()
    cut = bottleneck_cut(graph, costs, budget=1)
    assert not cut.proven and cut.visited == 1
    assert graph.is_closed(cut.head) and cut.value >= 7.0
    with pytest.raises(ValueError, match="at least 1 state"):
        bottleneck_cut(graph, costs, budget=0)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        dataclasses.replace(costs, workers=0)


# --------------------------------------------------------------------------- the planner


def _chain(edge_ms, cloud_ms, *, workers=1):
    """x -> A -> a -> B -> b -> C -> y, every node ``edge_ms`` on the device and ``cloud_ms``
    in the cloud; x is 100 kB, a 10 kB, b 1 kB, y 16 bytes (float32[N, 4])."""
    builder = Builder("chain")
    x = builder.input("x", ["N", 4])
    a = builder.op("Relu", [x])
    b = builder.op("Tanh", [a])
    builder.output(builder.op("Sigmoid", [b]))
    model = builder.model()
    graph = ModelGraph.load(model)
    sizes = {x: 100_000.0, a: 10_000.0, b: 1_000.0}
    tensors = {name: {"raw": CodecCost(size, 0.0, 0.0)} for name, size in sizes.items()}
    edge = synthetic_profile(graph, "edge", [edge_ms] * 3, tensors)
    cloud = synthetic_profile(graph, "cloud", [cloud_ms] * 3, tensors)
    return Planner(graph, edge, cloud, cloud_workers=workers), model, edge, cloud


def test_latency_and_throughput_choose_different_cuts_where_the_arithmetic_says():
    planner, *_ = _chain(10.0, 1.0)
    a, b = (o for node in planner.graph.nodes[:2] for o in node.outputs)
    # At 10 Mbit/s a byte takes 8e-4 ms: x 80 ms, a 8, b 0.8, y 0.0128.
    #             device  uplink  cloud  downlink | slowest  fps   | latency at RTT 40
    # cloud-only     0     80       3    0.0128   |   80     12.5  | 123.0128
    # after A       10      8       2    0.0128   |   10    100    |  60.0128
    # after B       20      0.8     1    0.0128   |   20     50    |  61.8128
    # edge-only     30      0       0    0        |   30     33.3  |  30
    link = Link(10e6, 40.0)
    assert planner.choose(link).best.cut == "edge"
    choice = planner.choose(link, objective="throughput")
    assert choice.best.tensors == (a,)
    assert dataclasses.asdict(choice.best.stages) == pytest.approx(
        {"device_ms": 10.0, "uplink_ms": 8.0, "cloud_ms": 2.0, "downlink_ms": 0.0128}
    )
    assert choice.best.predicted_fps == pytest.approx(100.0)
    fps = {p.tensors: p.predicted_fps for p in choice.candidates}
    assert fps == pytest.approx({("x",): 12.5, (a,): 100.0, (b,): 50.0, (): 1000 / 30})
    assert choice.best.total_ms == pytest.approx(60.0128)
    for words in ("100.0 fps", "3.00x", "8.00x", "bottleneck is the device stage (10.0 ms"):
        assert words in choice.reason, choice.reason
    with pytest.raises(ValueError, match="unknown objective 'fps'"):
        planner.choose(link, objective="fps")


def test_cloud_workers_share_the_cloud_stage():
    # At 1 Gbit/s x takes 0.8 ms. One worker: cloud-only's cloud stage is 18 ms, after A
    # max(10, 12) = 12 ms (cloud-bound), after B 20, edge-only 30. Three workers divide
    # the cloud stage: cloud-only becomes 6 ms, the fastest.
    link = Link(1e9, 40.0)
    planner = _chain(10.0, 6.0)[0]
    one = planner.choose(link, objective="throughput")
    assert one.best.tensors == planner.graph.nodes[0].outputs  # after A
    assert one.best.stages.bottleneck == "cloud"
    assert one.best.predicted_fps == pytest.approx(1000 / 12)
    three = _chain(10.0, 6.0, workers=3)[0].choose(link, objective="throughput")
    assert three.best.tensors == ("x",) and three.best.stages.cloud_ms == pytest.approx(6.0)
    assert three.best.predicted_fps == pytest.approx(1000 / 6)
    assert three.to_json()["candidates"][0]["cloud_workers"] == 3
    with pytest.raises(ValueError, match="cloud_workers must be at least 1"):
        _chain(10.0, 6.0, workers=0)


def _prefix_cuts_only(graph: ModelGraph, profile: Profile) -> Profile:
    """The profile without the cuts whose head is not a prefix of the node order: the
    per-node costs stay exact, and the other cuts are left to the search."""
    heads = {c.id: c.head for c in enumerate_cuts(graph, max_tensors=None)}
    kept = tuple(c for c in profile.cuts if heads[c.id] & (heads[c.id] + 1) == 0)
    return dataclasses.replace(profile, cuts=kept)


def _stage_costs(graph, edge, cloud, tensors, label, link, keep, workers) -> StageCosts:
    def part(name, value):
        return math.inf if keep and name in graph.inputs else value

    return StageCosts(
        edge=edge,
        cloud=cloud,
        encode={name: per[label].encode_ms for name, per in tensors.items()},
        transfer={name: part(name, link.up_ms(per[label].bytes)) for name, per in tensors.items()},
        decode={name: per[label].decode_ms for name, per in tensors.items()},
        receive={o: link.down_ms(graph.spec(o).bytes_per_sample() or 0) for o in graph.outputs},
        workers=workers,
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=planning_cases(), workers=st.integers(1, 4))
def test_the_throughput_plan_equals_brute_force_over_every_cut_and_codec(case, workers):
    graph, edge, cloud, tensors, link, keep = case
    planner = Planner(
        graph,
        _prefix_cuts_only(graph, synthetic_profile(graph, "edge", edge, tensors)),
        _prefix_cuts_only(graph, synthetic_profile(graph, "cloud", cloud, tensors)),
        cloud_workers=workers,
    )
    choice = planner.choose(link, Constraints(keep_input_on_device=keep), "throughput")
    best = min(
        brute_force(graph, _stage_costs(graph, edge, cloud, tensors, label, link, keep, workers))
        for label in ("raw", "zstd")
    )
    assert math.isclose(choice.best.stages.bottleneck_ms, best, rel_tol=1e-9, abs_tol=1e-9)
    assert all(choice.best.predicted_fps >= p.predicted_fps for p in choice.candidates)
    if keep:
        assert not set(choice.best.tensors) & set(graph.inputs)


def test_a_throughput_sweep_switches_where_the_slowest_stages_meet(tmp_path):
    planner, *_ = _chain(10.0, 1.0)
    a, b = (o for node in planner.graph.nodes[:2] for o in node.outputs)
    # Slowest stage at u Mbit/s: edge-only 30; after B max(20, 8/u); after A max(10, 80/u);
    # cloud-only max(3, 800/u). They meet at 8/30, 4 and 80 Mbit/s, whatever the RTT.
    plan = sweep(planner, objective="throughput", rtts_ms=[0.0, 100.0], tolerance=0.0)
    tensors = {c["id"]: tuple(c["tensors"]) for c in plan.cuts}
    for rtt in (0.0, 100.0):
        segments = [s for s in plan.segments if s.rtt_ms == rtt]
        assert [tensors[s.cut] for s in segments] == [(), (b,), (a,), ("x",)]
        ends = [s.uplink_to_mbit for s in segments[:-1]]
        assert ends == pytest.approx([8 / 30, 4.0, 80.0], rel=1e-9)
    latency = sweep(planner, rtts_ms=[100.0], tolerance=0.0)
    assert [s.cut for s in latency.segments] == ["edge"]  # a 100 ms RTT costs every split
    assert latency.objective == "latency" and plan.objective == "throughput"
    assert plan.constraints["cloud_workers"] == 1

    path = tmp_path / "plan.json"
    plan.save(path)
    assert json.loads(path.read_text())["objective"] == "throughput"
    assert load_plan(path) == plan
    raw = json.loads(path.read_text())
    del raw["objective"]  # a plan written before the objective existed
    path.write_text(json.dumps(raw))
    assert load_plan(path).objective == "latency"
    raw["objective"] = "fps"
    path.write_text(json.dumps(raw))
    with pytest.raises(PlanError, match="objective 'fps'"):
        load_plan(path)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def chain_files(tmp_path):
    _, model, edge, cloud = _chain(10.0, 1.0)
    onnx.save_model(model, str(tmp_path / "chain.onnx"))
    edge.save(tmp_path / "edge.json")
    cloud.save(tmp_path / "cloud.json")
    return [
        str(tmp_path / "chain.onnx"),
        "--edge",
        str(tmp_path / "edge.json"),
        "--cloud",
        str(tmp_path / "cloud.json"),
        "--uplink",
        "10mbit",
        "--rtt",
        "40ms",
    ]


def test_plan_objective_throughput_prints_fps_and_stages(chain_files, tmp_path, capsys):
    assert main(["plan", *chain_files, "--objective", "throughput", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["objective"] == "throughput"
    assert answer["best"]["predicted_fps"] == pytest.approx(100.0)
    assert set(answer["best"]["stages"]) == {"device_ms", "uplink_ms", "cloud_ms", "downlink_ms"}
    assert answer["best"]["stages"]["device_ms"] == pytest.approx(10.0)
    assert all({"predicted_fps", "stages"} <= set(c) for c in answer["candidates"])

    assert main(["plan", *chain_files, "--json"]) == 0  # latency, as before
    answer = json.loads(capsys.readouterr().out)
    assert answer["objective"] == "latency" and answer["best"]["cut"] == "edge"
    assert set(answer["best"]) == {"cut", "codec", "predicted_ms"}
    assert not any({"predicted_fps", "cloud_workers"} & set(c) for c in answer["candidates"])

    assert main(["plan", *chain_files, "--objective", "throughput", "--cloud-workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "stages of the best, ms a frame: device 10.00, uplink 8.00, cloud 1.00 over 2" in text
    assert "100.0 fps" in text

    out = tmp_path / "plan.json"
    sweep_args = ["--objective", "throughput", "--sweep", "--out", str(out)]
    assert main(["plan", *chain_files, *sweep_args]) == 0
    assert "for throughput" in capsys.readouterr().out
    plan = load_plan(out)
    assert plan.objective == "throughput" and plan.default["predicted_fps"] == pytest.approx(100)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--objective", "fps"], "invalid choice: 'fps'"),
        (["--objective", "throughput", "--cloud-workers", "0"], "between 1 and 65536"),
        (["--objective", "throughput", "--cloud-workers", "two"], "invalid int value"),
        (["--cloud-workers", "2"], "add --objective throughput"),
    ],
)
def test_bad_objective_options_are_one_line_and_exit_2(chain_files, capsys, extra, message):
    try:
        code: int | str | None = main(["plan", *chain_files, *extra])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("splitinfer") and message in err
