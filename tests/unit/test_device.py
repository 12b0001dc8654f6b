"""The emulated slow device: compute is dilated by the fastest run seen, so a
momentary delay of this machine counts once, not ``factor`` times."""

from __future__ import annotations

import time

from runtime.engine import SlowDevice


def _work(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def test_a_slow_device_dilates_by_its_fastest_run_and_adds_a_delay_once():
    device = SlowDevice(3.0)
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
