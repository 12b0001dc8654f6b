"""The device's policy alone: made-up costs, a fake clock, no sleep, no server.

Each test sets the costs so that the answer follows from the cost model by hand:
a head of ``head`` ms sending ``up`` bytes at 8 Mbit/s takes ``up / 1000`` ms on the
wire, plus the round trip and the server's time."""

from __future__ import annotations

import pytest

from runtime.device.costs import LOCAL, CostTable, Measured, PathCosts
from runtime.device.link import CircuitBreaker, LinkEstimator
from runtime.device.options import EdgeOptions
from runtime.device.policy import EXPLORE_EVERY, Policy, Route
from runtime.power import PowerModel

FAST = LinkEstimator(uplink_bps=8e6, rtt_ms=10.0).estimate().link  # 1 kB a ms


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _table(clock: Clock, local_ms: float = 100.0, **paths: PathCosts) -> CostTable:
    table = CostTable(clock=clock)
    table.local = PathCosts(local_ms)
    for cut, costs in paths.items():
        costs.measured_at = clock.now
        table.set((cut, "raw"), costs)
    return table


def _key(route: Route | None) -> tuple[str, str] | None:
    return None if route is None else route.key


def _path(head_ms: float, up_bytes: float, server_ms: float = 5.0) -> PathCosts:
    return PathCosts(head_ms, up_bytes=up_bytes, server_ms=server_ms, tensors=(f"t{head_ms}",))


def test_it_splits_where_the_split_is_faster_and_runs_locally_where_it_is_not():
    clock = Clock()
    # mid: 10 + 20 + 10 + 5 = 45 ms; late: 40 + 1 + 10 + 5 = 56 ms; local 100 ms
    table = _table(clock, mid=_path(10.0, 20_000), late=_path(40.0, 1_000))
    policy = Policy(EdgeOptions())
    route = policy.choose(table.snapshot(), FAST)
    assert route is not None and route.key == ("mid", "raw") and not route.trial
    assert policy.predict(table.snapshot(), ("mid", "raw"), FAST) == pytest.approx(45.0)
    slow = LinkEstimator(uplink_bps=80e3, rtt_ms=10.0).estimate().link  # 10 B a ms
    assert policy.choose(table.snapshot(), slow) is None  # mid 2 s, late 165 ms: local


def test_it_runs_locally_while_the_link_is_down_and_splits_again_once_it_is_back():
    clock = Clock()
    table = _table(clock, mid=_path(10.0, 20_000))
    breaker = CircuitBreaker(clock=clock, backoff_s=0.25)
    policy = Policy(EdgeOptions())
    breaker.failure()
    down = table.snapshot(breaker_closed=False, link_down=breaker.blocked())
    assert down.link_down and policy.choose(down, FAST) is None
    assert policy.choose_stream(down, FAST) is None
    clock.now += 0.3  # the backoff has passed: one call may try (half-open)
    trying = table.snapshot(breaker_closed=False, link_down=breaker.blocked())
    route = policy.choose(trying, FAST)
    assert route is not None and route.key == ("mid", "raw")
    assert breaker.allow() and breaker.blocked()  # that one call is on its way
    breaker.success()
    back = table.snapshot(link_down=breaker.blocked())
    assert policy.choose(back, FAST) == route


def test_local_margin_and_the_deadline():
    clock = Clock()
    table = _table(clock, local_ms=50.0, mid=_path(10.0, 20_000))  # split 45 ms
    assert Policy(EdgeOptions()).choose(table.snapshot(), FAST) is not None
    # a split must be predicted 1.2x faster: 45 x 1.2 > 50
    assert Policy(EdgeOptions(local_margin=1.2)).choose(table.snapshot(), FAST) is None
    # a margin under 1 prefers a split up to that much slower (45 x 0.8 < 40) ...
    slower = _table(clock, local_ms=40.0, mid=_path(10.0, 20_000))
    route = Policy(EdgeOptions(local_margin=0.8)).choose(slower.snapshot(), FAST)
    assert route is not None and route.key == ("mid", "raw")
    # ... but not past the deadline while the local run meets it
    late = Policy(EdgeOptions(local_margin=0.8, deadline_ms=42.0))
    assert late.choose(slower.snapshot(), FAST) is None
    # when the local run cannot meet the deadline either, the faster split is taken
    slow_local = _table(clock, local_ms=500.0, mid=_path(10.0, 20_000))
    route = Policy(EdgeOptions(deadline_ms=40.0)).choose(slow_local.snapshot(), FAST)
    assert route is not None and route.key == ("mid", "raw")


def test_a_late_call_penalty_moves_the_choice_and_fades_with_the_clock():
    clock = Clock()
    table = _table(clock, mid=_path(10.0, 20_000), late=_path(40.0, 1_000))
    policy = Policy(EdgeOptions())
    table.penalize(("mid", "raw"), late_ms=100.0, remote_ms=35.0)  # +115 ms
    route = policy.choose(table.snapshot(), FAST)
    assert route is not None and route.key == ("late", "raw")
    clock.now += 5.0  # e^-5 of it is left: 0.8 ms
    route = policy.choose(table.snapshot(), FAST)
    assert route is not None and route.key == ("mid", "raw")


def test_a_stale_cut_is_tried_again_after_explore_s_with_a_bounded_wait():
    clock = Clock()
    # mid 45 ms, late 2 + 5 + 10 + 40 = 57 ms, local 60 ms
    table = _table(clock, local_ms=60.0, mid=_path(10.0, 20_000), late=_path(2.0, 5_000, 40.0))
    policy = Policy(EdgeOptions(explore_s=2.0))

    def choose():
        table.started()
        snapshot = table.snapshot()
        route = policy.choose(snapshot, FAST)
        if route is not None and route.trial:
            assert table.claim_trial(route.key, snapshot)
        return route

    for _ in range(EXPLORE_EVERY + 1):
        assert not choose().trial  # nothing stale yet
    # mid keeps being measured; late, not chosen, goes stale
    clock.now += 2.5
    table.observe(("mid", "raw"), Measured(10.0, 0.0, 5.0, 0.0, 20_000, 16))
    trial = choose()
    assert trial is not None and trial.trial and trial.key == ("late", "raw")
    # its wait keeps the request within twice the path it replaces (mid, 45 ms), its
    # head and then a local run included: 2 x (45 + the 16-byte answer's 0.016) - 60 - 2
    assert trial.wait_ms == pytest.approx(2 * 45.016 - 60.0 - 2.0)
    clock.now += 1.0  # within explore_s of that trial: none
    for _ in range(EXPLORE_EVERY + 1):
        assert not choose().trial


def test_trials_wait_for_explore_every_requests_and_take_only_codecs_sent_alone():
    clock = Clock()
    table = _table(clock, local_ms=60.0, mid=_path(10.0, 20_000), late=_path(2.0, 5_000, 40.0))
    table.set(("late", "delta+zstd"), _path(2.0, 5_000, 40.0))  # never measured
    policy = Policy(EdgeOptions(explore_s=2.0), unary=[("mid", "raw"), ("late", "raw")])
    clock.now += 10.0
    table.observe(("mid", "raw"), Measured(10.0, 0.0, 5.0, 0.0, 20_000, 16))
    snapshot = table.snapshot()
    assert policy.trial(snapshot, FAST, ("mid", "raw"), 45.0) is None  # too few requests
    for _ in range(EXPLORE_EVERY):
        table.started()
    snapshot = table.snapshot()
    trial = policy.trial(snapshot, FAST, ("mid", "raw"), 45.0)
    # the delta path is the stalest too, but a single request is never sent with it
    assert trial is not None and trial.key == ("late", "raw")
    assert trial.wait_ms == pytest.approx(2 * 45.0 - 60.0 - 2.0)
    # a path that could not answer within its wait is not tried
    slow = LinkEstimator(uplink_bps=8e6, rtt_ms=30.0).estimate().link  # 5 + 30 > 28
    assert policy.trial(snapshot, slow, ("mid", "raw"), 45.0 + 20.0) is not None
    assert policy.trial(snapshot, slow, ("mid", "raw"), 45.0) is None
    assert table.claim_trial(trial.key, snapshot)
    assert not table.claim_trial(trial.key, snapshot)  # one trial at a time
    assert policy.trial(table.snapshot(), FAST, ("mid", "raw"), 45.0) is None  # just tried


def test_an_unserved_cut_is_dropped_from_the_table_and_never_chosen():
    clock = Clock()
    table = _table(clock, mid=_path(10.0, 20_000), late=_path(40.0, 1_000))
    policy = Policy(EdgeOptions())
    assert _key(policy.choose(table.snapshot(), FAST)) == ("mid", "raw")
    table.drop("mid")
    assert ("mid", "raw") not in table.snapshot().paths
    route = policy.choose(table.snapshot(), FAST)
    assert route is not None and route.key == ("late", "raw")
    table.drop("late")
    assert policy.choose(table.snapshot(), FAST) is None  # nothing left: local


def test_the_energy_objective_takes_the_least_energy_within_the_deadline():
    power = PowerModel(
        compute_w=2.0, idle_w=0.1, uplink_mw_per_mbit=0.0, downlink_mw_per_mbit=0.0,
        radio_base_mw=1000.0,
    )  # fmt: skip
    clock = Clock()
    # mid: 10 ms compute (20 mJ) + 20 ms radio (20 mJ) + 15 ms idle: 41.5 mJ in 45 ms
    # late: 40 ms compute (80 mJ) + 1 ms radio + 15 idle: 82.5 mJ in 56 ms
    # cheap: 2 ms compute (4 mJ) + 60 ms radio (60 mJ) + 15 idle: 65.5 mJ in 77 ms
    table = _table(
        clock, local_ms=100.0,  # 200 mJ
        mid=_path(10.0, 20_000), late=_path(40.0, 1_000), cheap=_path(2.0, 60_000),
    )  # fmt: skip
    policy = Policy(EdgeOptions(objective="energy", power=power, deadline_ms=200.0))
    snapshot = table.snapshot()
    assert policy.energy(snapshot.paths[("mid", "raw")].parts, FAST) == pytest.approx(41.5)
    assert _key(policy.choose(snapshot, FAST)) == ("mid", "raw")
    # with mid late beyond the deadline, the least energy among those that meet it
    table.penalize(("mid", "raw"), late_ms=200.0, remote_ms=0.0)
    assert _key(policy.choose(table.snapshot(), FAST)) == ("cheap", "raw")
    # the local run wins when it spends less than every split that meets the deadline
    thrifty = Policy(EdgeOptions(objective="energy", power=power, deadline_ms=60.0))
    table.local = PathCosts(20.0)  # 40 mJ
    assert thrifty.choose(table.snapshot(), FAST) is None


def test_a_stream_takes_the_path_with_the_most_frames_per_second():
    clock = Clock()
    # mid's slowest stage is the uplink (20 ms); late's the device (40 ms)
    table = _table(clock, mid=_path(10.0, 20_000), late=_path(40.0, 1_000))
    assert _key(Policy(EdgeOptions()).choose_stream(table.snapshot(), FAST)) == ("mid", "raw")
    table.set(("mid", "delta+zstd"), _path(10.0, 20_000))  # priced as its key frame
    route = Policy(EdgeOptions()).choose_stream(table.snapshot(), FAST)
    assert route is not None and route.key == ("mid", "delta+zstd")  # no worse: first
    table.local = PathCosts(15.0)  # a local run paces 15 ms a frame, mid's 20
    assert Policy(EdgeOptions()).choose_stream(table.snapshot(), FAST) is None


def test_the_local_run_is_a_path_of_the_table_too():
    clock = Clock()
    table = _table(clock, local_ms=100.0)
    table.local.edge_cold_ms = 10.0
    policy = Policy(EdgeOptions())
    assert policy.local_ms(table.snapshot(), FAST) == pytest.approx(110.0)
    table.observe_local(100.0)  # measured runs include whatever idling cost: it fades
    assert policy.local_ms(table.snapshot(), FAST) == pytest.approx(107.0)
    assert LOCAL not in table.snapshot().paths
