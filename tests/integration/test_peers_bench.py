"""The peer benchmark's quick path, on a tiny model: each peer's cut measured beside
ours and the oracle, with valid JSON, Markdown and a plot."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_quick_peer_benchmark_measures_each_peers_cut(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "peers.json").read_text())
    (model,) = report["models"]
    assert model["model"] == "tiny" and len(model["points"]) == 2
    for point in model["points"]:
        for peer in ("neurosurgeon", "dads"):
            measured = point["peers"][peer]
            assert measured["cut"] in model["served_cuts"] and measured["measured_ms"] > 0
            assert measured["predicted_ms"] > 0
            sent = "-" if measured["cut"] == "edge" else "raw"
            (label,) = [k for k, r in point["routes"].items() if r == [measured["cut"], sent]]
            assert measured["measured_ms"] == point["measured_cuts"][label]
        assert point["oracle_ms"] == min(point["measured_cuts"].values())
        assert point["oracle_cut"] in model["served_cuts"]
    assert set(report["neurosurgeon_predictors"]) >= {"conv", "linear", "maxpool"}
    assert "| model | speed-up vs Neurosurgeon (x, geomean)" in (tmp_path / "peers.md").read_text()
    assert (tmp_path / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
