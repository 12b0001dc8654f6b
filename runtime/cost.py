"""The cost model, one for the planner and the device (DESIGN.md). For one request
through cut *c* with codec *k*::

    T = edge(head_c) + enc_k + (bytes_k(c) + the call's own bytes) / uplink + RTT
        + the call's own time + cloud(tail_c) + dec_k
        + (bytes(outputs of the tail) + the answer's own bytes) / downlink
        + each side's run after idling (a request that finds it idle)

``Parts`` are what the two sides measure of a request (compute times, payload
bytes); ``price`` puts them on a ``Link`` with the call's own costs
(``CallCosts``) and returns the ``Breakdown`` whose ``total_ms`` is T. A stream
of frames is a pipeline of four ``Stages`` (device, uplink, cloud, downlink),
paced by the slowest; ``energy_mj`` is the device's energy of a request under a
power model (runtime.power). The planner (partitioner.plan) prices candidates
with these, the device's policy (runtime.device.policy) prices its choices with
them: a term added here is added to both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from runtime.errors import PlanError
from runtime.power import PowerModel


@dataclass(frozen=True)
class Link:
    """A link as the cost model sees it."""

    uplink_bps: float
    rtt_ms: float
    downlink_bps: float | None = None  # None: as fast as the uplink
    # what a split call costs beyond the RTT, its compute and its bytes: fixed, and per
    # tensor sent (None: as the cloud profile measured it on loopback)
    call_ms: float | None = None
    tensor_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.uplink_bps > 0 or (self.downlink_bps is not None and not self.downlink_bps > 0):
            raise PlanError("link rates must be positive")
        if not self.rtt_ms >= 0:
            raise PlanError("the round-trip time cannot be negative")
        for cost in (self.call_ms, self.tensor_ms):
            if cost is not None and not (math.isfinite(cost) and cost >= 0):
                raise PlanError("a call's cost must be finite and at least 0")

    def up_ms(self, nbytes: float) -> float:
        return nbytes * 8 / self.uplink_bps * 1000.0

    @property
    def downlink_rate(self) -> float:
        """The downlink's rate (bit/s): as the uplink's where none is given."""
        return self.downlink_bps or self.uplink_bps

    def down_ms(self, nbytes: float) -> float:
        return nbytes * 8 / self.downlink_rate * 1000.0

    def describe(self) -> str:
        text = f"uplink {self.uplink_bps / 1e6:g} Mbit/s, RTT {self.rtt_ms:g} ms"
        if self.downlink_bps:
            text += f", downlink {self.downlink_bps / 1e6:g} Mbit/s"
        return text


@dataclass(frozen=True)
class Stages:
    """One frame's time in each stage of the pipeline."""

    device_ms: float  # head and encode
    uplink_ms: float
    cloud_ms: float  # decode and tail, per worker
    downlink_ms: float

    @property
    def bottleneck_ms(self) -> float:
        return max(self.device_ms, self.uplink_ms, self.cloud_ms, self.downlink_ms)

    @property
    def bottleneck(self) -> str:
        """The slowest stage: device, uplink, cloud or downlink (the first of equals)."""
        times = {
            "device": self.device_ms,
            "uplink": self.uplink_ms,
            "cloud": self.cloud_ms,
            "downlink": self.downlink_ms,
        }
        return max(times, key=lambda name: times[name])


@dataclass(frozen=True, kw_only=True)
class CallCosts:
    """What a split call costs beyond its tensors' payloads and both sides' compute:
    a fixed time and one per tensor sent (gRPC and both ends' hops, beyond the RTT),
    and the bytes of its framing, headers and fields (a request's, each tensor's
    beside its name, an answer's). The cloud profile measures them
    (partitioner.calls); a plan carries them to the device."""

    call_ms: float = 0.0
    tensor_ms: float = 0.0
    call_bytes: float = 0.0
    tensor_bytes: float = 0.0
    answer_bytes: float = 0.0

    def ms(self, link: Link, tensors: int) -> float:
        """The call's own time for ``tensors`` tensors: the link's figures where it has
        them, else these."""
        fixed = self.call_ms if link.call_ms is None else link.call_ms
        each = self.tensor_ms if link.tensor_ms is None else link.tensor_ms
        return fixed + each * tensors

    def tensor_wire_bytes(self, name: str) -> float:
        """What sending the tensor ``name`` adds to a call beyond its payload: its fields
        and its name; nothing where a call's bytes were not measured."""
        measured = self.call_bytes or self.tensor_bytes or self.answer_bytes
        return self.tensor_bytes + len(name.encode()) if measured else 0.0

    def request_bytes(self, names: Sequence[str]) -> float:
        """What a call sending the tensors ``names`` puts on the link beyond their
        payloads."""
        return self.call_bytes + sum(self.tensor_wire_bytes(n) for n in names)

    def to_json(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in CALL_FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CallCosts:
        """From a plan's or a profile's figures (absent ones: not measured, 0)."""
        data = data or {}
        return cls(**{name: float(data.get(name, 0.0)) for name in CALL_FIELDS})


CALL_FIELDS = ("call_ms", "tensor_ms", "call_bytes", "tensor_bytes", "answer_bytes")


@dataclass(frozen=True, kw_only=True)
class Parts:
    """One request through a (cut, codec) before a link prices it: what each side
    computes (ms) and the payloads that cross the link (bytes). No tensors sent:
    the device runs it all (edge-only), and nothing else is paid."""

    edge_ms: float = 0.0  # the head (edge-only: the whole model)
    encode_ms: float = 0.0
    sent_bytes: float = 0.0  # the tensors' payloads, encoded
    tensors: tuple[str, ...] = ()  # their names: each adds its fields to the call
    cloud_ms: float = 0.0  # the tail
    decode_ms: float = 0.0  # the server decoding the tensors
    output_bytes: float = 0.0  # the answer's payload
    answer_ms: float = 0.0  # the device reading the answer
    # what a run after idling costs beyond a warm one, on each side that runs
    edge_cold_ms: float = 0.0
    cloud_cold_ms: float = 0.0
    penalty_ms: float = 0.0  # the device's: what late calls on this path cost at least

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "penalty_ms"}
        return {**data, "tensors": list(self.tensors)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Parts:
        """From a plan's figures (absent ones: 0)."""
        numbers = {
            f.name: float(data[f.name])
            for f in fields(cls)
            if f.name not in ("tensors", "penalty_ms") and f.name in data
        }
        return cls(**numbers, tensors=tuple(str(t) for t in data.get("tensors", ())))


@dataclass(frozen=True, kw_only=True)
class Breakdown:
    """A request priced on a link, part by part, in ms; ``total_ms`` is T."""

    edge_ms: float = 0.0
    encode_ms: float = 0.0
    transfer_ms: float = 0.0
    rtt_ms: float = 0.0
    call_ms: float = 0.0  # the call's own cost beyond the RTT (gRPC, both ends' hops)
    cloud_ms: float = 0.0
    decode_ms: float = 0.0
    return_ms: float = 0.0
    answer_ms: float = 0.0
    # a request's run after idling beyond a warm one, on each side that runs (a stream's
    # frames run back to back: not in the stages)
    edge_cold_ms: float = 0.0
    cloud_cold_ms: float = 0.0
    penalty_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return (
            self.edge_ms
            + self.edge_cold_ms
            + self.encode_ms
            + self.transfer_ms
            + self.rtt_ms
            + self.call_ms
            + self.cloud_cold_ms
            + self.cloud_ms
            + self.decode_ms
            + self.return_ms
            + self.answer_ms
            + self.penalty_ms
        )

    @property
    def device_compute_ms(self) -> float:
        """What the device computes: its head (after idling), the encoding, the answer."""
        return self.edge_ms + self.edge_cold_ms + self.encode_ms + self.answer_ms

    @property
    def waiting_ms(self) -> float:
        """What the device waits for with its radio quiet: the round trip, the call, the
        cloud's work, and a late path's penalty."""
        return (
            self.rtt_ms
            + self.call_ms
            + self.cloud_cold_ms
            + self.cloud_ms
            + self.decode_ms
            + self.penalty_ms
        )


def price(parts: Parts, link: Link, call: CallCosts) -> Breakdown:
    """``parts`` on ``link``: the request's bytes each way at its rates, its round trip
    and the call's own time (none of them for a request that sends nothing)."""
    remote = bool(parts.tensors)
    sent = parts.sent_bytes + call.request_bytes(parts.tensors) if remote else 0.0
    answer = parts.output_bytes + call.answer_bytes if remote else 0.0
    return Breakdown(
        edge_ms=parts.edge_ms,
        encode_ms=parts.encode_ms,
        transfer_ms=link.up_ms(sent),
        rtt_ms=link.rtt_ms if remote else 0.0,
        call_ms=call.ms(link, len(parts.tensors)) if remote else 0.0,
        cloud_ms=parts.cloud_ms,
        decode_ms=parts.decode_ms,
        return_ms=link.down_ms(answer),
        answer_ms=parts.answer_ms,
        edge_cold_ms=parts.edge_cold_ms,
        cloud_cold_ms=parts.cloud_cold_ms if remote else 0.0,
        penalty_ms=parts.penalty_ms,
    )


def stages(b: Breakdown, cloud_workers: int = 1) -> Stages:
    """One frame of a stream in each stage of the pipeline (edge-only: all of it on the
    device); the cloud's stage is shared by the server's workers."""
    return Stages(
        device_ms=b.edge_ms + b.encode_ms,
        uplink_ms=b.transfer_ms,
        cloud_ms=(b.decode_ms + b.cloud_ms) / cloud_workers,
        downlink_ms=b.return_ms + b.answer_ms,
    )


def energy_mj(power: PowerModel, b: Breakdown, link: Link) -> float:
    """The device's energy (mJ) of the request ``b`` on ``link``: compute while it
    computes, the radio while the bytes go and come back, idle while it waits."""
    return power.energy_mj(
        compute_ms=b.device_compute_ms,
        transfer_ms=b.transfer_ms,
        return_ms=b.return_ms,
        idle_ms=b.waiting_ms,
        uplink_mbit=link.uplink_bps / 1e6,
        downlink_mbit=link.downlink_rate / 1e6,
    )


def finished_mj(
    power: PowerModel,
    link: Link,
    *,
    total_ms: float,
    compute_ms: float,
    sent_bytes: float = 0.0,
    received_bytes: float = 0.0,
) -> float:
    """A finished request's energy from its measured times: compute for ``compute_ms``,
    the radio while its bytes went and came back at the link's rates, idle for the rest
    of ``total_ms``."""
    return power.split_mj(
        total_ms=total_ms,
        compute_ms=compute_ms,
        transfer_ms=link.up_ms(sent_bytes),
        return_ms=link.down_ms(received_bytes),
        uplink_mbit=link.uplink_bps / 1e6,
        downlink_mbit=link.downlink_rate / 1e6,
    )
