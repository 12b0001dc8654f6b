"""The latency benchmark's quick path, on a tiny model: valid JSON, Markdown and PNG."""

from __future__ import annotations

import json
import subprocess
import sys


def _no_nan(value: str) -> float:
    raise ValueError(f"{value} is not valid JSON")


def test_the_quick_benchmark_writes_its_reports(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.latency",
            "--quick",
            "--models",
            "tiny",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "latency.json").read_text(), parse_constant=_no_nan)
    (model,) = report["models"]
    assert model["model"] == "tiny" and len(model["points"]) == 6
    for point in model["points"]:
        for key in ("edge_only_ms", "cloud_only_ms", "planned_ms", "adaptive_ms", "oracle_ms"):
            assert point[key] is None or point[key] > 0
        # the oracle is the best measured cut, so no measured cut beats it
        measured = [v for v in point["measured_cuts"].values() if v is not None]
        assert point["oracle_ms"] == min(measured)
        assert point["call_ms"] > 0  # measured through the link, priced by the planner
        for peer in ("neurosurgeon", "dads"):  # each peer's cut, served, measured raw
            measured = point["peers"][peer]
            assert measured["cut"] in model["served_cuts"]
            sent = "-" if measured["cut"] == "edge" else "raw"
            (label,) = [k for k, r in point["routes"].items() if r == [measured["cut"], sent]]
            assert measured["measured_ms"] == point["measured_cuts"][label]
        for radio in ("lte", "3g", "wifi"):
            energy = point["energy"][radio]
            spent = [v for v in energy["measured"].values() if v is not None]
            assert energy["oracle_mj"] == min(spent) and energy["edge_only_mj"] > 0
            assert energy["energy_plan_mj"] >= energy["oracle_mj"] > 0
    assert report["headline"]["points"] == 6
    assert set(report["headline"]["energy"]) == {"lte", "3g", "wifi"}
    table = (tmp_path / "latency.md").read_text()
    assert "| uplink Mbit/s | RTT ms | edge-only | cloud-only |" in table
    assert "device energy per request, mJ" in table
    assert "| Neurosurgeon (cut) | DADS (cut) | oracle (cut) |" in table
    assert (tmp_path / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
