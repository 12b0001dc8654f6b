"""Energy as an objective: the power model's arithmetic, the energy-optimal cut against
brute force on random DAGs, the choices a battery wants, and the two constraints."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitioner.cli import main
from partitioner.plan import Constraints, Link, Planner, load_plan, sweep
from runtime.errors import PlanError
from runtime.power import PowerError, PowerModel, load_power, preset
from tests.profiles import additive_costs, chain_planner, synthetic_profile
from tests.strategies import closed_heads, planning_cases

PHONE = PowerModel(
    compute_w=2.0, idle_w=0.5, uplink_mw_per_mbit=400.0, downlink_mw_per_mbit=50.0,
    radio_base_mw=1000.0,
)  # fmt: skip


def test_each_candidates_energy_is_the_power_model_by_hand():
    planner, a, _ = chain_planner(PHONE)
    link = Link(10e6, 40.0)  # 10 Mbit/s: 10 kB take 8 ms; the 16-byte output 0.0128 ms
    by_cut = {p.tensors: p for p in planner.candidates(link)}
    after_a = by_cut[(a,)]
    # compute 10 ms x 2 W; send 8 ms at (400 x 10 + 1000) mW; receive 0.0128 ms at
    # (50 x 10 + 1000) mW; idle (40 ms RTT + 2 ms of cloud) x 0.5 W
    want = 10 * 2.0 + 8 * 5.0 + 0.0128 * 1.5 + 42 * 0.5
    assert math.isclose(after_a.energy_mj or 0, want, rel_tol=1e-12)
    assert math.isclose(by_cut[()].energy_mj or 0, 30 * 2.0)  # edge-only: compute alone
    choice = planner.choose(link, objective="energy")
    assert choice.to_json()["best"]["predicted_mj"] == choice.best.energy_mj
    assert all("energy_mj" in c for c in choice.to_json()["candidates"])
    assert "least device energy" in choice.reason


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=planning_cases(),
    compute=st.floats(0.1, 10.0),
    idle=st.floats(0.0, 2.0),
    alpha=st.floats(0.0, 1000.0),
    beta=st.floats(0.0, 2000.0),
)
def test_the_energy_plan_equals_brute_force_over_every_cut_and_codec(
    case, compute, idle, alpha, beta
):
    graph, edge, cloud, tensors, link, keep = case
    power = PowerModel(
        compute_w=compute, idle_w=idle, uplink_mw_per_mbit=alpha,
        downlink_mw_per_mbit=alpha / 4, radio_base_mw=beta,
    )  # fmt: skip
    planner = Planner(
        graph,
        synthetic_profile(graph, "edge", edge, tensors),
        synthetic_profile(graph, "cloud", cloud, tensors),
        power=power,
    )
    choice = planner.choose(link, Constraints(keep_input_on_device=keep), "energy")
    # by hand: each side's time at its power, the radio at its rate-dependent power
    up_w = power.uplink_w(link.uplink_bps / 1e6)
    down_w = power.downlink_w(link.uplink_bps / 1e6)
    best = math.inf
    for label in ("raw", "zstd"):
        costs = additive_costs(graph, edge, cloud, tensors, label, link, keep_input_on_device=keep)
        for head in closed_heads(graph):
            energy = sum(compute * t for i, t in enumerate(edge) if head >> i & 1)
            energy += sum(idle * t for i, t in enumerate(cloud) if not head >> i & 1)
            for name in graph.crossing(head):
                cost = tensors[name][label]
                if math.isinf(costs.send[name]):
                    energy = math.inf
                    break
                energy += compute * cost.encode_ms + idle * cost.decode_ms
                energy += up_w * link.up_ms(cost.bytes)
            for name in graph.outputs:
                producer = graph.producer.get(name)
                if producer is not None and not head >> producer & 1:
                    energy += down_w * costs.receive[name]
            if head != graph.all_mask:
                energy += idle * link.rtt_ms
            best = min(best, energy)
    assert math.isclose(choice.best.energy_mj or 0.0, best, rel_tol=1e-9, abs_tol=1e-9)


def test_a_slow_power_hungry_link_computes_here_and_a_fast_cheap_one_offloads():
    hungry = dataclasses.replace(PHONE, uplink_mw_per_mbit=900.0, radio_base_mw=1300.0)
    planner, _, _ = chain_planner(hungry)
    slow = planner.choose(Link(0.5e6, 100.0), objective="energy")
    assert slow.best.cut == "edge"
    # the energy of sending is alpha x bits plus beta x time: cheap per bit, fast link
    cheap = dataclasses.replace(PHONE, uplink_mw_per_mbit=5.0, radio_base_mw=100.0)
    planner, _, _ = chain_planner(cheap)
    fast = planner.choose(Link(1000e6, 5.0), objective="energy")
    assert fast.best.cut == "cloud"
    # and energy is not latency: sending a is fastest (21.0 ms against 26.4 for b), but
    # with the radio's base power at 8 W, computing B too and sending b costs 49.5 mJ
    # against 87.6 (and 60 for computing everything here)
    planner, a, b = chain_planner(dataclasses.replace(PHONE, radio_base_mw=8000.0))
    link = Link(20e6, 5.0)
    assert planner.choose(link).best.tensors == (a,)
    assert planner.choose(link, objective="energy").best.tensors == (b,)


def test_deadlines_and_energy_caps_are_respected():
    planner, a, b = chain_planner(PHONE)
    link = Link(10e6, 5.0)
    # after A: 25.0 ms, 63.5 mJ; after B: 26.8 ms, 47.0 mJ; edge-only: 30 ms, 60 mJ
    free = planner.choose(link, objective="energy")
    assert free.best.tensors == (b,) and math.isclose(free.best.energy_mj or 0, 47.0, rel_tol=1e-3)
    # the least energy within 26 ms: only sending a is fast enough
    fast = planner.choose(link, Constraints(deadline_ms=26.0), "energy")
    assert fast.best.tensors == (a,)
    assert all(c.total_ms <= 26.0 for c in fast.candidates)
    # the fastest within an energy cap below the fastest cut's energy
    quickest = planner.choose(link)
    assert quickest.best.tensors == (a,)
    cap = (quickest.best.energy_mj or 0) * 0.99
    capped = planner.choose(link, Constraints(max_energy_mj=cap))
    assert capped.best.tensors == (b,) and all((c.energy_mj or 0) <= cap for c in capped.candidates)
    with pytest.raises(PlanError, match="no cut is allowed"):
        planner.choose(link, Constraints(deadline_ms=1.0), "energy")
    plain, _, _ = chain_planner(PHONE)
    plain.power = None
    with pytest.raises(PlanError, match="need the device's power model"):
        plain.choose(link, objective="energy")


def test_an_energy_sweep_writes_its_objective_and_segments(tmp_path):
    planner, _, _ = chain_planner(PHONE)
    plan = sweep(planner, objective="energy", rtts_ms=[40.0], tolerance=0.0)
    assert plan.objective == "energy" and plan.constraints["power"]["compute_w"] == 2.0
    path = tmp_path / "plan.json"
    plan.save(path)
    assert load_plan(path).objective == "energy"
    for segment in plan.segments:  # each segment's choice is the least energy inside it
        middle = math.sqrt(segment.uplink_from_mbit * segment.uplink_to_mbit)
        best = planner.choose(Link(middle * 1e6, 40.0), objective="energy").best
        assert (best.cut, best.codec) == (segment.cut, segment.codec)


def test_power_models_load_from_presets_and_files(tmp_path):
    lte = preset("lte")
    assert (lte.uplink_mw_per_mbit, lte.downlink_mw_per_mbit, lte.radio_base_mw) == (
        438.39, 51.97, 1288.04,
    )  # fmt: skip
    assert lte.example_device and load_power("WiFi").name == "wifi"
    assert math.isclose(lte.uplink_w(10.0), (4383.9 + 1288.04) / 1000)
    device = tmp_path / "phone.json"
    device.write_text(json.dumps({"radio": "3g", "compute_w": 3.5, "idle_w": 0.25, "x": 1}))
    model = load_power(device)
    assert (model.compute_w, model.radio_base_mw, model.example_device) == (3.5, 817.88, False)
    for text, message in (
        ('{"compute_w": 1}', "lacks idle_w, uplink_mw_per_mbit"),
        ('{"radio": "5g", "compute_w": 1, "idle_w": 1}', "unknown power preset '5g'"),
        ('{"radio": "lte", "compute_w": -1, "idle_w": 1}', "compute_w must be finite"),
        ("[1]", "a JSON object"),
        ("{", "not a JSON power model"),
    ):
        device.write_text(text)
        with pytest.raises(PowerError, match=message):
            load_power(device)
    with pytest.raises(PowerError, match="neither a power preset"):
        load_power(tmp_path / "missing.json")


def test_the_cli_plans_for_energy(tmp_path, capsys):
    from tests.graphs import chain_cnn

    model = tmp_path / "m.onnx"
    import onnx

    onnx.save(chain_cnn(), str(model))
    for device, extra in (("edge", ["--slowdown", "20"]), ("cloud", [])):
        main(["profile", str(model), "--out", str(tmp_path / f"{device}.json"),
              "--repeats", "2", "--samples", "1", "--no-call-cost", *extra])  # fmt: skip
    capsys.readouterr()
    base = ["plan", str(model), "--edge", str(tmp_path / "edge.json"), "--cloud",
            str(tmp_path / "cloud.json"), "--uplink", "20mbit"]  # fmt: skip
    assert main([*base, "--power", "lte", "--objective", "energy", "--json"]) == 0
    out, err = capsys.readouterr()
    best = json.loads(out)["best"]
    assert best["predicted_mj"] > 0 and json.loads(out)["objective"] == "energy"
    assert "example" in err  # the preset's device figures are not a measurement
    assert main([*base, "--power", "wifi", "--deadline-ms", "1000", "--objective", "energy"]) == 0
    assert "device energy of the best" in capsys.readouterr().out
    for args, message in (
        (["--objective", "energy"], "need the device's power model"),
        (["--max-energy-mj", "5"], "need the device's power model"),
        (["--power", "lte", "--max-energy-mj", "-3"], "positive number of millijoules"),
        (["--power", "5g"], "5g: neither a power preset"),
    ):
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
