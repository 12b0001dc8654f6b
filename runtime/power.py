"""What a request costs the device's battery: a power model and the energy of a
split, for the planner (partitioner.plan) and the device runtime alike.

The radio follows the linear model of Huang et al., "A Close Examination of
Performance and Power Characteristics of 4G LTE Networks" (MobiSys 2012), which
Neurosurgeon (ASPLOS 2017) uses: while sending at t Mbit/s the radio draws
``alpha_up * t + beta`` mW, while receiving ``alpha_down * t + beta`` mW. The
device draws ``compute_w`` while it computes (the head, encoding, a local run)
and ``idle_w`` while it waits for the cloud.

One request's device energy, in mJ (ms x W):

    E = compute_w * (head + encode)
      + P_up(uplink) * transfer + P_down(downlink) * return
      + idle_w * (RTT + cloud + decode)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from runtime.errors import SplitInferError

FIELDS = ("compute_w", "idle_w", "uplink_mw_per_mbit", "downlink_mw_per_mbit", "radio_base_mw")

# alpha_up, alpha_down (mW per Mbit/s) and beta (mW), as measured by Huang et al. (MobiSys
# 2012) on a commercial LTE network, 3G (UMTS) and Wi-Fi with an HTC phone
RADIOS: dict[str, tuple[float, float, float]] = {
    "lte": (438.39, 51.97, 1288.04),
    "3g": (868.98, 122.12, 817.88),
    "wifi": (283.17, 137.01, 132.86),
}
# The device part of a preset: round example figures for a phone-class device, not a
# measurement of any device (none is published for the emulated device here). Give
# your device's in a JSON file.
EXAMPLE_COMPUTE_W = 2.0
EXAMPLE_IDLE_W = 0.3


class PowerError(SplitInferError):
    """A power model that cannot be used (unknown preset, bad file, bad numbers)."""


@dataclass(frozen=True, kw_only=True)
class PowerModel:
    """A device's power: W while computing and while idle, and its radio (mW)."""

    compute_w: float
    idle_w: float
    uplink_mw_per_mbit: float
    downlink_mw_per_mbit: float
    radio_base_mw: float
    name: str = "custom"
    example_device: bool = False  # compute_w and idle_w are the preset's examples

    def __post_init__(self) -> None:
        for field in FIELDS:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PowerError(f"power model: {field} must be a number, not {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise PowerError(f"power model: {field} must be finite and at least 0, not {value}")

    def uplink_w(self, mbit_s: float) -> float:
        """The radio's power (W) while sending at ``mbit_s``."""
        return (self.uplink_mw_per_mbit * mbit_s + self.radio_base_mw) / 1000.0

    def downlink_w(self, mbit_s: float) -> float:
        """The radio's power (W) while receiving at ``mbit_s``."""
        return (self.downlink_mw_per_mbit * mbit_s + self.radio_base_mw) / 1000.0

    def energy_mj(
        self,
        *,
        compute_ms: float,
        transfer_ms: float = 0.0,
        return_ms: float = 0.0,
        idle_ms: float = 0.0,
        uplink_mbit: float = 0.0,
        downlink_mbit: float = 0.0,
    ) -> float:
        """The device's energy (mJ) for these stage times (ms) on this link."""
        return (
            self.compute_w * compute_ms
            + self.uplink_w(uplink_mbit) * transfer_ms
            + self.downlink_w(downlink_mbit) * return_ms
            + self.idle_w * idle_ms
        )

    def split_mj(
        self,
        *,
        total_ms: float,
        compute_ms: float,
        transfer_ms: float,
        return_ms: float,
        uplink_mbit: float,
        downlink_mbit: float,
    ) -> float:
        """A finished split's energy from its measured times: compute for the head and
        encoding, the radio while the bytes go and come back, idle for the rest."""
        idle = max(total_ms - compute_ms - transfer_ms - return_ms, 0.0)
        return self.energy_mj(
            compute_ms=compute_ms,
            transfer_ms=transfer_ms,
            return_ms=return_ms,
            idle_ms=idle,
            uplink_mbit=uplink_mbit,
            downlink_mbit=downlink_mbit,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "example_device"} | (
            {"example_device": True} if self.example_device else {}
        )


def preset(name: str) -> PowerModel:
    """A radio preset (``lte``, ``3g``, ``wifi``) with the example device figures."""
    key = name.strip().lower().replace("-", "")
    if key not in RADIOS:
        raise PowerError(f"unknown power preset {name!r}; presets: {', '.join(RADIOS)}")
    up, down, base = RADIOS[key]
    return PowerModel(
        compute_w=EXAMPLE_COMPUTE_W,
        idle_w=EXAMPLE_IDLE_W,
        uplink_mw_per_mbit=up,
        downlink_mw_per_mbit=down,
        radio_base_mw=base,
        name=key,
        example_device=True,
    )


def load_power(spec: str | Path) -> PowerModel:
    """A preset name, or a JSON file of the five fields (``FIELDS``); a file may name a
    ``"radio"`` preset for the three radio fields and give the device's two. Other keys
    are kept for later fields and ignored here."""
    text = str(spec)
    if text.strip().lower().replace("-", "") in RADIOS:
        return preset(text)
    path = Path(text)
    if not path.is_file():
        raise PowerError(f"{text}: neither a power preset ({', '.join(RADIOS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PowerError(f"{path}: not a JSON power model ({exc})") from None
    if not isinstance(data, dict):
        raise PowerError(f"{path}: a power model is a JSON object with {', '.join(FIELDS)}")
    values: dict[str, Any] = {}
    radio = data.get("radio")
    if radio is not None:
        base = preset(str(radio))
        values.update(
            uplink_mw_per_mbit=base.uplink_mw_per_mbit,
            downlink_mw_per_mbit=base.downlink_mw_per_mbit,
            radio_base_mw=base.radio_base_mw,
        )
    values.update({k: data[k] for k in FIELDS if k in data})
    missing = [k for k in FIELDS if k not in values]
    if missing:
        raise PowerError(
            f"{path}: the power model lacks {', '.join(missing)} "
            '(a "radio": "lte"|"3g"|"wifi" key fills the three radio fields)'
        )
    return PowerModel(**values, name=str(data.get("name", path.stem)))


def with_device(model: PowerModel, compute_w: float, idle_w: float) -> PowerModel:
    """``model`` with the device's own compute and idle power."""
    return replace(model, compute_w=compute_w, idle_w=idle_w, example_device=False)
