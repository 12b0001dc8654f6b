"""The link estimator: a measurement replaces the seed, one outlier moves nothing."""

from __future__ import annotations

import pytest

from runtime.device.link import LinkEstimator


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_samples_replace_the_seeds_and_one_outlier_moves_nothing():
    clock = Clock()
    link = LinkEstimator(uplink_bps=10e6, rtt_ms=40.0, clock=clock)
    link.observe_rtt(5.0)
    link.observe_transfer(125_000, 10.0)  # 1 Mbit in 10 ms: 100 Mbit/s
    assert link.estimate().rtt_ms == pytest.approx(5.0)
    assert link.estimate().uplink_bps == pytest.approx(100e6)
    link.observe_rtt(5.0)
    link.observe_transfer(125_000, 10.0)
    link.observe_rtt(500.0)  # one stalled probe
    link.observe_transfer(125_000, 1000.0)  # one slow transfer
    assert link.estimate().rtt_ms == pytest.approx(5.0)
    assert link.estimate().uplink_bps == pytest.approx(100e6)


def test_a_call_is_split_into_round_trip_and_transfer_by_the_current_estimates():
    clock = Clock()
    link = LinkEstimator(uplink_bps=10e6, rtt_ms=40.0, clock=clock)
    link.observe_rtt(5.0)
    clock.now = 2.0
    for _ in range(3):
        link.observe(1_250_000, 105.0)  # 10 Mbit: 100 ms beyond the 5 ms round trip
    estimate = link.estimate()
    assert estimate.uplink_bps == pytest.approx(100e6, rel=0.15)
    assert estimate.rate_age_s == 0.0 and estimate.rtt_age_s == 2.0
