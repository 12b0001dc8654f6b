"""The emulated slow device: compute is dilated by the fastest run seen, so a
momentary delay of this machine counts once, not ``factor`` times."""

from __future__ import annotations

import math
import time

from runtime.engine import SlowDevice


def _work(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def test_a_slow_device_dilates_by_its_fastest_run_and_adds_a_delay_once():
    device = SlowDevice(3.0)
    for _ in range(1 + SlowDevice.CALIBRATIONS):  # its first runs, re-measured warm
        result, first = device.run("work", _work, 0.02)
        assert result == "done" and 55 <= first <= 90  # 20 ms of work, 3x
    start = time.perf_counter()
    _, delayed = device.run("work", time.sleep, 0.06)  # this run was held up 40 ms
    wall = (time.perf_counter() - start) * 1000
    assert 95 <= delayed <= 130, delayed  # 60 + 2 x 20, not 3 x 60
    assert abs(wall - delayed) < 15
    _, other = device.run("other", time.sleep, 0.005)  # each key has its own fastest run
    assert 12 <= other <= 40
    assert SlowDevice(1.0).run("x", time.sleep, 0.01)[1] < 30


class _Cached:
    """Work that takes 20 ms after a pause and 10 ms right after another run, as work
    whose data has left this machine's caches does."""

    def __init__(self) -> None:
        self.last = -math.inf

    def __call__(self) -> None:
        time.sleep(0.01 if time.perf_counter() - self.last < 0.003 else 0.02)
        self.last = time.perf_counter()


def test_a_slow_device_dilates_by_a_warm_run_though_its_callers_sleep_between_runs():
    device, work = SlowDevice(3.0), _Cached()
    # every run follows a pause (the device's own sleep): cold, 20 ms; the device is
    # 3x the 10 ms of a warm run, plus what the cold run added once
    times = [device.run("work", work)[1] for _ in range(3)]
    assert all(35 <= t <= 55 for t in times), times  # not 3 x 20 = 60


class _BusyAtFirst(_Cached):
    """As _Cached, but this machine is busy during the first four runs: 30 ms each."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls <= 4:
            time.sleep(0.03)
            self.last = time.perf_counter()
        else:
            super().__call__()


def test_a_busy_moment_during_the_first_calibration_does_not_slow_the_device_for_good():
    device, work = SlowDevice(3.0), _BusyAtFirst()
    times = [device.run("work", work)[1] for _ in range(6)]
    # the first run and its three warm repeats met the busy moment (30 ms each); the
    # next runs repeat once warm (10 ms) inside their sleep: 20 cold + 2 x 10, not 2 x 20
    assert all(35 <= t <= 55 for t in times[2:]), times
    start = time.perf_counter()
    _, reported = device.run("work", work)
    assert abs((time.perf_counter() - start) * 1000 - reported) < 10  # the wall agrees


def test_execution_providers_are_chosen_and_checked(tmp_path):
    import numpy as np
    import onnx
    import pytest
    from onnx import TensorProto, helper

    from runtime.engine import SessionOptions, make_session, parse_providers, run_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "neg", [x], [y])
    path = tmp_path / "neg.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    chosen = parse_providers("cpu")
    session = make_session(path, SessionOptions(providers=chosen))
    assert session.get_providers() == ["CPUExecutionProvider"]
    out = run_session(session, {"x": np.array([1.0, -2.0], np.float32)})["y"]
    assert out.tolist() == [-1.0, 2.0]
    with pytest.raises(ValueError, match="not available in this ONNX Runtime; available here"):
        parse_providers("nosuchprovider")
    with pytest.raises(ValueError, match="no execution provider given"):
        parse_providers(" , ")


def test_io_binding_returns_what_a_plain_run_returns(tmp_path):
    """I/O binding (on by default for GPU providers) writes outputs of known shape into
    preallocated arrays; outputs whose shape depends on the data (NonZero) are copied
    out of ONNX Runtime. Both give exactly what session.run gives, batch after batch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from runtime.engine import SessionOptions, make_session, run_session

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "found"]),
        helper.make_tensor_value_info("d", TensorProto.DOUBLE, ["batch", 3]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("NonZero", ["y"], ["idx"]),
        helper.make_node("Cast", ["y"], ["d"], to=TensorProto.DOUBLE),
    ]
    graph = helper.make_graph(nodes, "bound", [x], outputs, [weight])
    path = tmp_path / "bound.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    plain = make_session(path, SessionOptions())
    bound = make_session(path, SessionOptions(io_binding=True))
    assert not plain.splitinfer_io_binding and bound.splitinfer_io_binding
    rng = np.random.default_rng(0)
    for batch in (1, 5, 2):
        feeds = {"x": rng.standard_normal((batch, 4)).astype(np.float32)}
        feeds["x"][0, :] = 0  # a row of zeros: NonZero finds fewer than all
        want, got = run_session(plain, feeds), run_session(bound, feeds)
        assert list(got) == ["y", "idx", "d"]
        for name in want:
            assert got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name])
        assert got["idx"].shape[1] == 3 * (batch - 1)


def test_work_that_changes_state_runs_once_a_call():
    """A delta encoder keeps each frame as the next one's reference: the device must
    not repeat it to measure it warm."""
    calls = []

    def stateful() -> int:
        calls.append(1)
        time.sleep(0.002)
        return len(calls)

    device = SlowDevice(4.0)
    answers = [device.run("encode", stateful, repeatable=False)[0] for _ in range(6)]
    assert answers == [1, 2, 3, 4, 5, 6] and len(calls) == 6
    device.run("other", stateful)  # repeatable work is measured warm again
    assert len(calls) == 6 + 1 + 3
