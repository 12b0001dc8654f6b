"""The adaptive edge runtime behind the link emulator: it follows the bandwidth,
falls back locally on every kind of failure, comes back, and loses nothing."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest

from bench.processes import start_server, stop
from partitioner import ModelGraph, cut_from_tensors, write_artifacts
from runtime.cloud.tails import TailHost
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.kserve_client import KServeClient
from runtime.device.linkem import LinkEmulator
from runtime.engine import SessionOptions, make_session, run_session
from tests.graphs import adaptive_model, write_adaptive_artifacts

EXACT = SessionOptions(optimize=False)
SLOWDOWN = 20.0  # the emulated device is 20x slower than this machine


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("adaptive")
    return directory, write_adaptive_artifacts(directory)


@pytest.fixture
def server(artifacts, serve):
    return serve(TailHost([artifacts[0]], session_options=EXACT))


def _feeds(seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((1, 16384)).astype(np.float32)}


def _runtime(directory, target, **options):
    defaults = EdgeOptions(
        deadline_ms=300.0, slowdown=SLOWDOWN, exact=True, rtt_ms=1.0, uplink_bps=1e9
    )
    return EdgeRuntime(directory, SplitClient(target), dataclasses.replace(defaults, **options))


def _paths(runtime, count, feeds=None):
    return [(r.path, r.cut) for r in (runtime.infer(feeds or _feeds()) for _ in range(count))]


def test_a_bandwidth_drop_moves_to_a_smaller_cut_and_recovery_moves_back(artifacts, server):
    directory, _ = artifacts
    with (
        LinkEmulator("127.0.0.1", server.port) as link,
        # a device slow enough that computing h loses to sending x on the unshaped link
        # clearly (at 20x, on a machine that runs the model in 0.3 ms, by 4%), and not so
        # slow that it never tries h there (at 100x it then learned h only by exploring,
        # after the drop, five requests late)
        _runtime(directory, link.address, deadline_ms=2000, slowdown=50.0) as runtime,
    ):
        first = _paths(runtime, 5)
        assert first[-1] == ("split", "cloud"), (first, runtime.stats())
        link.set(up_bps=2e6, down_bps=2e6)
        after_drop = _paths(runtime, 6)
        # it stops sending x within a few requests, for h or a local run: which of the
        # two, and when, depends on this machine's speed at the moment (the choice
        # itself is tested with made-up costs in tests/unit/test_policy.py)
        assert after_drop[-1] != ("split", "cloud"), after_drop
        assert after_drop[-1] in (("split", "mid"), ("local", "edge"))
        moved = next(n for n, p in enumerate(after_drop) if p[1] != "cloud")
        assert moved <= 4 and ("split", "cloud") not in after_drop[moved:], after_drop
        link.set(up_bps=None, down_bps=None)
        deadline = time.monotonic() + 5  # probes notice within about a second
        while _paths(runtime, 3) != [("split", "cloud")] * 3:
            assert time.monotonic() < deadline, runtime.stats()
            time.sleep(0.05)


def _answered_locally_in_time(result, deadline_ms):
    assert result.path in ("fallback", "local")
    assert result.timing["total_ms"] <= deadline_ms + result.timing["local_ms"] + 30


@pytest.mark.parametrize("mode", ["reset", "hang"])
def test_a_link_cut_mid_request_is_answered_locally_within_the_deadline(mode, artifacts, server):
    directory, _ = artifacts
    deadline = 250.0
    expected = run_session(make_session(directory / "model.onnx", EXACT), _feeds())
    with (
        LinkEmulator("127.0.0.1", server.port) as link,
        _runtime(directory, link.address, deadline_ms=deadline) as runtime,
    ):
        _paths(runtime, 3)
        link.set(up_bps=1e6)  # 64 KiB now takes ~0.5 s: the cut lands mid-transfer
        timer = threading.Timer(0.05, link.cut, args=(mode,))
        timer.start()
        result = runtime.infer(_feeds())
        timer.join()
        assert result.path in ("fallback", "local", "split")
        if result.path != "split":
            _answered_locally_in_time(result, deadline)
        for _ in range(5):  # and while the link stays down
            result = runtime.infer(_feeds())
            _answered_locally_in_time(result, deadline)
            np.testing.assert_array_equal(
                next(iter(result.outputs.values())), next(iter(expected.values()))
            )
        link.restore()
        link.set(up_bps=None)
        start = time.monotonic()
        while _paths(runtime, 1)[-1][0] != "split":
            assert time.monotonic() - start < 2.0, ("split resumes within 2 s", runtime.stats())
            time.sleep(0.02)


def test_a_killed_server_means_local_answers_and_a_restarted_one_resumes_within_2_s(artifacts):
    directory, _ = artifacts
    process, port = start_server([directory])
    try:
        with _runtime(directory, f"127.0.0.1:{port}", deadline_ms=250.0) as runtime:
            runtime.client.wait_ready(10)
            assert _paths(runtime, 3)[-1][0] == "split"
            stop(process, signal.SIGKILL)
            calls_before = runtime.stats()["calls"]
            for _ in range(30):
                _answered_locally_in_time(runtime.infer(_feeds()), 250.0)
            # the breaker stops calling a dead server on every request
            assert runtime.stats()["calls"] - calls_before <= 3, runtime.stats()
            process, _ = start_server([directory], port)
            start = time.monotonic()
            while _paths(runtime, 1)[-1][0] != "split":
                assert time.monotonic() - start < 2.0, "split resumes within 2 s of the restart"
                time.sleep(0.02)
    finally:
        stop(process, signal.SIGKILL)


def test_a_flapping_link_loses_nothing_and_every_answer_is_exact(artifacts, server):
    directory, _ = artifacts
    inputs = [_feeds(seed) for seed in range(8)]
    local = make_session(directory / "model.onnx", EXACT)
    expected = [next(iter(run_session(local, f).values())) for f in inputs]
    stop = threading.Event()
    with (
        LinkEmulator("127.0.0.1", server.port) as link,
        _runtime(directory, link.address, deadline_ms=150.0) as runtime,
    ):

        def flap():
            rng = np.random.default_rng(3)
            while not stop.is_set():
                time.sleep(float(rng.uniform(0.05, 0.2)))
                link.cut("hang" if rng.integers(2) else "reset")
                time.sleep(float(rng.uniform(0.05, 0.2)))
                link.restore()

        flapper = threading.Thread(target=flap)
        flapper.start()
        answers = 0
        try:
            for index in range(500):
                result = runtime.infer(inputs[index % len(inputs)])
                np.testing.assert_array_equal(
                    next(iter(result.outputs.values())), expected[index % len(inputs)]
                )
                answers += 1
        finally:
            stop.set()
            flapper.join()
        stats = runtime.stats()
    assert answers == 500 and sum(stats["paths"].values()) == 500
    assert stats["paths"]["split"] > 0 and stats["paths"]["fallback"] + stats["paths"]["local"] > 0


def test_concurrent_callers_all_get_exact_answers(artifacts, server):
    directory, _ = artifacts
    inputs = [_feeds(seed) for seed in range(4)]
    local = make_session(directory / "model.onnx", EXACT)
    expected = [next(iter(run_session(local, f).values())) for f in inputs]
    with _runtime(directory, server.target) as runtime:
        wrong: list[int] = []

        def caller(index):
            for _ in range(15):
                result = runtime.infer(inputs[index])
                if not np.array_equal(next(iter(result.outputs.values())), expected[index]):
                    wrong.append(index)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = runtime.stats()
    assert wrong == [] and sum(stats["paths"].values()) == 60


def test_when_the_device_cannot_meet_the_deadline_alone_it_waits_for_the_cloud(artifacts, server):
    directory, _ = artifacts
    # local takes ~300x the machine's time (~200 ms), far beyond the deadline; the cloud is quick
    with _runtime(directory, server.target, deadline_ms=60.0, slowdown=300.0) as runtime:
        paths = _paths(runtime, 10)
        stats = runtime.stats()
    assert paths.count(("split", "cloud")) >= 9, (paths, stats)
    assert stats["breaker"]["state"] == "closed"


def test_it_measures_the_link_first_and_splits_filling_it_do_not_skew_the_round_trip(
    artifacts, server
):
    directory, _ = artifacts
    # seeded far off (1 Mbit/s, 100 ms) on a 100 Mbit/s link with a 10 ms round trip
    with LinkEmulator("127.0.0.1", server.port) as link:
        link.set(up_bps=100e6, down_bps=100e6, delay_ms=5)
        slow = {"slowdown": 300.0, "deadline_ms": 2000.0}  # local and the head are slow
        rt = _runtime(directory, link.address, rtt_ms=100.0, uplink_bps=1e6, **slow)
        with rt:
            first = rt.stats()["link"]
            # back-to-back splits of 64 KiB keep the link busy; probes landing among them
            # would measure the queue behind a split, not the round trip
            results = [rt.infer(_feeds()) for _ in range(30)]
            stats = rt.stats()
    assert 8 <= first["rtt_ms"] <= 25, first
    assert 50e6 <= first["uplink_bps"] <= 200e6, first
    paths = [(r.path, r.cut) for r in results]
    assert paths.count(("split", "cloud")) >= 25, paths
    assert 8 <= stats["link"]["rtt_ms"] <= 25, stats
    # what the estimates are for: the cloud cut's latency predicted within 25%
    measured = np.median([r.timing["total_ms"] for r in results if r.cut == "cloud"])
    assert abs(stats["predicted_ms"]["cloud:raw"] / measured - 1) <= 0.25, (measured, stats)


def test_auto_codec_sends_each_cut_with_a_codec_the_plan_chose_for_it(tmp_path, serve):
    write_adaptive_artifacts(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["plan"] = {"cuts": [{"id": "cloud", "codecs": ["zstd"]}, {"id": "edge"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    server = serve(TailHost([tmp_path], session_options=EXACT))
    expected = run_session(make_session(tmp_path / "model.onnx", EXACT), _feeds())
    sparse = {"x": np.where(_feeds()["x"] > 2, 1.0, 0.0).astype(np.float32)}
    with _runtime(tmp_path, server.target) as rt:
        assert set(rt.cuts) == {"cloud"}  # the plan's cuts only
        results = [rt.infer(_feeds()) for _ in range(3)] + [rt.infer(sparse)]
        with _runtime(tmp_path, server.target, codec="raw") as raw:
            forced = raw.infer(_feeds())
    assert [(r.path, r.cut, r.codec) for r in results] == [("split", "cloud", "zstd")] * 4
    assert all(np.array_equal(results[0].outputs[k], v) for k, v in expected.items())
    assert (forced.path, forced.codec) == ("split", "raw")


class SlowTailHost(TailHost):
    """A server whose tails take 60 ms: far longer than a call's first prediction."""

    def compute(self, model, cut_id, feeds):
        time.sleep(0.06)
        return super().compute(model, cut_id, feeds)


def test_a_tail_slower_than_the_first_hedge_is_learned_not_hedged_forever(artifacts, serve):
    directory, _ = artifacts
    server = serve(SlowTailHost([directory], session_options=EXACT))
    # no plan, so nothing says the tail takes 60 ms; local is slower still (0.3 to 1 ms
    # x 1000, here).
    # Hedged forever, every split would fall back. A cut whose server time is still
    # unknown looks fast next to one learned slow, so the other cut may be tried and
    # hedged too before both are known.
    with _runtime(directory, server.target, slowdown=1000.0, deadline_ms=3000) as runtime:
        paths = _paths(runtime, 24)
        stats = runtime.stats()
    seen = " ".join(f"{path}:{cut}" for path, cut in paths)
    assert stats["paths"]["split"] >= 16 and stats["paths"]["fallback"] <= 5, seen


class BusyHost(TailHost):
    """A server whose tails take ``delay_s`` longer while it is busy."""

    delay_s = 0.0

    def compute(self, model, cut_id, feeds):
        time.sleep(self.delay_s)
        return super().compute(model, cut_id, feeds)


@pytest.mark.parametrize("explore_s", [1.0, math.inf])
def test_a_server_that_was_busy_is_used_again_once_it_is_not(explore_s, artifacts, serve):
    directory, _ = artifacts
    host = BusyHost([directory], session_options=EXACT)
    server = serve(host)
    # local takes ~100 ms; no hedging, so the slow answers are waited for and what the
    # server costs is learned (a hedged call would leave a fading penalty instead)
    options = {"deadline_ms": 3000, "slowdown": 100.0, "hedge": False, "explore_s": explore_s}
    with _runtime(directory, server.target, **options) as runtime:
        assert _paths(runtime, 5)[-1][0] == "split"
        host.delay_s = 0.3  # answering, but far slower than a local run
        busy_until = time.monotonic() + 2
        while time.monotonic() < busy_until:
            _paths(runtime, 1)
        # it stopped splitting (a trial, cut short, falls back)
        assert all(path != "split" for path, _ in _paths(runtime, 3)), json.dumps(runtime.stats())
        host.delay_s = 0.0  # the runtime can learn this only by sending a request
        start, resumed = time.monotonic(), False
        while not resumed and time.monotonic() - start < 4:
            resumed = _paths(runtime, 1)[-1][0] == "split"
        stats = runtime.stats()
    if explore_s == math.inf:  # without trials it would never know
        assert not resumed and stats["explored"] == 0, json.dumps(stats)
    else:
        assert resumed and stats["explored"] >= 1, json.dumps(stats)


def test_a_client_has_its_own_connection_so_another_clients_upload_does_not_hold_it_up(server):
    with LinkEmulator("127.0.0.1", server.port) as link:
        link.set(up_bps=8e6)
        with SplitClient(link.address) as bulk, SplitClient(link.address) as mine:
            bulk.probe(0, timeout=5)
            mine.probe(0, timeout=5)
            upload = threading.Thread(target=bulk.probe, args=(2_000_000,), kwargs={"timeout": 10})
            upload.start()
            time.sleep(0.2)  # 2 MB at 8 Mbit/s: the upload fills its pipe for 2 s
            round_trip, _ = mine.probe(0, timeout=5)
            upload.join()
    # on a shared connection this call would wait behind the upload (and the runtime's
    # link estimate would measure another client's queue)
    assert round_trip < 300, round_trip


def _one_cut_artifacts(directory):
    """The adaptive model's artifacts with the "cloud" cut only (no "mid")."""
    model, _ = adaptive_model()
    graph = ModelGraph.load(model)
    write_artifacts(graph, [cut_from_tensors(graph, ["x"], cut_id="cloud")], directory)
    return directory


@pytest.mark.parametrize("protocol", ["splitinfer", "kserve"])
def test_at_start_it_uses_only_the_cuts_the_server_has(protocol, artifacts, tmp_path, serve):
    directory, _ = artifacts
    server = serve(TailHost([_one_cut_artifacts(tmp_path)], session_options=EXACT))
    client = (KServeClient if protocol == "kserve" else SplitClient)(server.target)
    options = EdgeOptions(deadline_ms=2000, slowdown=SLOWDOWN, exact=True, uplink_bps=1e9)
    with EdgeRuntime(directory, client, options) as runtime:
        unserved: Any = runtime.stats()["unserved"]
        assert set(unserved) == {"mid"}
        results = [runtime.infer(_feeds()) for _ in range(10)]
        stats: dict[str, Any] = runtime.stats()
    assert {r.cut for r in results} <= {"cloud", "edge"}
    assert not stats["failures"] and stats["breaker"]["state"] == "closed", stats


def test_a_not_found_cut_is_dropped_and_the_breaker_stays_closed(artifacts, tmp_path):
    """A server redeployed without one of the device's cuts: the first NOT_FOUND for it
    removes that cut; the server's other cut, and the breaker, are not touched."""
    directory, _ = artifacts
    local = make_session(directory / "model.onnx", EXACT)
    process, port = start_server([directory])
    try:
        with LinkEmulator("127.0.0.1", port) as link:
            link.set(up_bps=2e6, down_bps=2e6)  # a slow link: "mid" (256 B) is the cut
            with _runtime(directory, link.address, deadline_ms=2000) as runtime:
                # "mid" in use before the swap; a first call slowed by a busy machine is
                # hedged and penalised for a while, so this waits for it, within reason
                before: list[tuple[str, str]] = []
                until = time.monotonic() + 15
                while ("split", "mid") not in before[-3:]:
                    assert time.monotonic() < until, (before, runtime.stats())
                    before += _paths(runtime, 3)
                stop(process, signal.SIGKILL)
                process, _ = start_server([_one_cut_artifacts(tmp_path)], port)
                runtime.client.wait_ready(10)
                time.sleep(1.0)  # the breaker, open while the server was away, closes
                feeds: list[dict[str, np.ndarray]] = []
                results: list[Any] = []
                deadline = time.monotonic() + 30  # until the runtime tries "mid" again
                dropped_at = None  # the request whose NOT_FOUND dropped "mid"
                while dropped_at is None or len(results) < dropped_at + 20:
                    assert time.monotonic() < deadline, runtime.stats()
                    feeds.append(_feeds(len(feeds)))
                    results.append(runtime.infer(feeds[-1]))
                    if dropped_at is None and "mid" in runtime.unserved:
                        dropped_at = len(results) - 1
                stats: dict[str, Any] = runtime.stats()
    finally:
        stop(process, signal.SIGKILL)
    # "mid" is dropped by the first NOT_FOUND for it (that request answered here), or
    # before any request meets one, when the server that answers again is asked what it
    # serves; none went to "mid" after it
    met = stats["failures"].get("NOT_FOUND", 0)
    assert met <= 1, stats
    if met:
        assert results[dropped_at].path == "fallback" and results[dropped_at].cut == "mid"
    assert "mid" not in {r.cut for r in results[dropped_at + 1 :]}, stats
    assert stats["breaker"]["state"] == "closed", stats
    for result, f in zip(results, feeds, strict=True):  # lost: none; every answer exact
        (expected,) = run_session(local, f).values()
        np.testing.assert_array_equal(next(iter(result.outputs.values())), expected)


def test_the_energy_objective_follows_the_link_and_counts_what_it_spends(artifacts, server):
    """Computing costs 5 W, the radio little on a fast link and much on a slow one: the
    least energy is sending the input on a fast link, the small tensor on a slow one.
    A device that computes for almost nothing keeps everything local instead."""
    from runtime.power import PowerModel

    directory, _ = artifacts
    power = PowerModel(
        compute_w=5.0,
        idle_w=0.05,
        uplink_mw_per_mbit=10.0,
        downlink_mw_per_mbit=10.0,
        radio_base_mw=3000.0,
    )
    with (
        LinkEmulator("127.0.0.1", server.port) as link,
        # slow enough that computing h costs more than sending x on the unshaped link
        _runtime(
            directory,
            link.address,
            deadline_ms=3000,
            objective="energy",
            power=power,
            slowdown=100.0,
        ) as runtime,
    ):
        results = [runtime.infer(_feeds()) for _ in range(5)]
        assert (results[-1].path, results[-1].cut) == ("split", "cloud"), runtime.stats()
        link.set(up_bps=2e6, down_bps=2e6)  # 64 KiB now take 0.26 s at 3 W of radio
        moved = [runtime.infer(_feeds())]
        deadline = time.monotonic() + 5  # probes notice within about a second
        while (moved[-1].path, moved[-1].cut) != ("split", "mid"):
            assert time.monotonic() < deadline, runtime.stats()
            time.sleep(0.05)
            moved.append(runtime.infer(_feeds()))
        spent = runtime.stats()["energy_mj"]
        assert isinstance(spent, dict)
        each = sum(r.timing["energy_mj"] for r in results + moved)
        assert math.isclose(sum(spent.values()), each, rel_tol=1e-9)
        split = results[-1].timing
        assert split["energy_mj"] >= power.compute_w * (split["head_ms"] + split["encode_ms"])
    frugal = dataclasses.replace(power, compute_w=0.001)
    with _runtime(
        directory, f"127.0.0.1:{server.port}", deadline_ms=3000, objective="energy", power=frugal
    ) as runtime:
        result = [runtime.infer(_feeds()) for _ in range(3)][-1]
        assert result.path == "local"
        assert math.isclose(result.timing["energy_mj"], 0.001 * result.timing["local_ms"])
    with pytest.raises(ValueError, match="needs the device's power model"):
        EdgeOptions(objective="energy")
