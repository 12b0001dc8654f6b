"""Values as people write them on a command line: rates (``10mbit``, ``2MB/s``),
durations (``40ms``, ``0.1s``) and addresses (``HOST:PORT``).

A unit is always required (``40`` could be ms or s; ``10`` could be bits or
bytes), and a negative or non-finite value is refused as such; every refusal
shows the accepted forms. Shared by the command line and the link emulator.
"""

from __future__ import annotations

import math
import re

RATE_FORMS = "a number and a unit, like 10mbit, 1.5gbit, 100kbps or 2MB/s"
DURATION_FORMS = "a number and a unit, like 40ms, 0.1s or 250us"
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_RATE = re.compile(_NUMBER + r"\s*([kKmMgGtT]?)(bits?|b|B|bps|Bps|bytes?)(/s|ps)?")
_TIME = re.compile(_NUMBER + r"\s*(us|µs|ms|s)", re.I)
_BARE = re.compile(_NUMBER)
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_rate(text: str) -> float:
    """``"10mbit"``, ``"1.5gbit"``, ``"100 kbps"``, ``"2MB/s"`` -> bits per second;
    ValueError, with the accepted forms, for anything else."""
    match = _RATE.fullmatch(text.strip())
    if not match:
        why = "a unit is needed (bits or bytes?)" if _BARE.fullmatch(text.strip()) else ""
        raise ValueError(f"bad rate {text!r}: {why + '; ' if why else ''}expected {RATE_FORMS}")
    value, prefix, unit = float(match.group(1)), match.group(2), match.group(3)
    if value < 0:
        raise ValueError(f"bad rate {text!r}: a rate cannot be negative")
    bits = value * _PREFIX[prefix.lower()]
    if unit.startswith(("B", "byte")):  # B, Bps, byte(s): bytes; b, bit(s), bps: bits
        bits *= 8
    if not (math.isfinite(bits) and bits > 0):
        raise ValueError(f"bad rate {text!r}: it must be a positive, finite number")
    return bits


def parse_duration_ms(text: str) -> float:
    """``"40ms"``, ``"0.1s"``, ``"250us"`` -> milliseconds; ValueError, with the
    accepted forms, for anything else (a bare number included: ms or s?)."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        why = "a unit is needed (ms or s?)" if _BARE.fullmatch(text.strip()) else ""
        raise ValueError(
            f"bad duration {text!r}: {why + '; ' if why else ''}expected {DURATION_FORMS}"
        )
    value, unit = float(match.group(1)), match.group(2).lower()
    if value < 0:
        raise ValueError(f"bad duration {text!r}: a duration cannot be negative")
    ms = value * {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    if not math.isfinite(ms):
        raise ValueError(f"bad duration {text!r}: it must be finite")
    return ms


GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def check_target(target: str) -> str:
    """A gRPC target a client may dial: ``HOST:PORT``, or a name with one of gRPC's own
    schemes (``dns:///host:port``, ``unix:/path``); ValueError otherwise, saying why
    (``host`` alone would dial port 443; ``http://`` is not gRPC's)."""
    text = str(target).strip()
    if text.startswith(GRPC_SCHEMES):
        return text
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"bad target {target!r}: gRPC targets have no {scheme}:// scheme; "
            "give HOST:PORT, like 127.0.0.1:50051"
        )
    _, port = parse_address(text, "target")
    if port == 0:
        raise ValueError(f"bad target {target!r}: port 0 is a server's any-port; give its port")
    return text


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError for a
    missing or out-of-range port, or no host. A port is always required: gRPC would
    take ``host`` alone as port 443, and wrap ports beyond 65535."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or (host.endswith(":") and not host.startswith("[")):
        raise ValueError(f"bad {what} {text!r}: expected HOST:PORT, like 127.0.0.1:50051")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad {what} {text!r}: the port must be a number from 0 to 65535")
    return host, int(port)
