"""How the adaptive edge runtime behaves: its options."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.power import PowerModel


@dataclass(frozen=True, kw_only=True)
class EdgeOptions:
    """How the runtime behaves. ``codec`` is one codec for every split, or "auto": for
    each cut, the codecs the plan chose for it (raw without a plan), and per request
    the one predicted fastest. ``slowdown`` emulates a device that many times slower
    (local compute is dilated by sleeping: runtime.engine.SlowDevice); ``exact`` turns
    ONNX Runtime's graph optimizations off, so that every path gives bit-identical
    outputs."""

    deadline_ms: float = 200.0
    codec: str = "auto"
    slowdown: float = 1.0
    exact: bool = False
    uplink_bps: float = 10e6  # the estimator's seed, unless the plan has a default link
    downlink_bps: float | None = None  # likewise (None: as fast as the uplink until measured)
    rtt_ms: float = 40.0
    hedge: bool = True  # compute locally once the cloud's answer is late
    probe_interval_s: float = 0.2
    stale_s: float = 0.5
    local_margin: float = 1.0  # a split must be predicted this many times faster
    explore_s: float = 2.0  # a cut's costs older than this are stale: try it again
    # streams (submit, stream): how their cut is chosen ("throughput": the most frames
    # per second; "latency": as infer), whether frames sent with zstd go as delta+zstd,
    # and a key frame every this many frames of a tensor (0: only when needed)
    stream_objective: str = "throughput"
    delta: bool = True
    key_every: int = 0
    cuts: tuple[str, ...] | None = None  # only these cuts (None: every one the plan serves)
    # infer(): the fastest path ("latency"), or the one predicted to spend the least of
    # the device's energy within the deadline ("energy", with ``power``); with a power
    # model, every Result's timing and stats() carry the device's energy estimate
    objective: str = "latency"
    power: PowerModel | None = None

    def __post_init__(self) -> None:
        if self.stream_objective not in ("throughput", "latency"):
            raise ValueError(
                f"stream_objective must be 'throughput' or 'latency', not {self.stream_objective!r}"
            )
        if self.key_every < 0:
            raise ValueError(f"key_every must be 0 or more, not {self.key_every}")
        if self.objective not in ("latency", "energy"):
            raise ValueError(f"objective must be 'latency' or 'energy', not {self.objective!r}")
        if self.objective == "energy" and self.power is None:
            raise ValueError("objective='energy' needs the device's power model (power=...)")
