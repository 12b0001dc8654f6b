"""The main job runs to completion on the real network and loses nothing."""

from __future__ import annotations

import re
import subprocess
import sys


def test_the_demo_runs_end_to_end_and_loses_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "partitioner.cli", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    for phase in ("fast link", "slow link", "link cut", "link restored"):
        assert phase in out
    assert "lost: 0" in out and "palace" in out  # a real prediction on a real photo
    energy = re.search(r"device energy per request, LTE radio .*: splitinfer ([0-9]+) mJ, "
                       r"edge-only ([0-9]+) mJ, cloud-only", out)  # fmt: skip
    assert energy and int(energy[1]) > 0 and int(energy[2]) > 0, out[-1500:]
    assert (tmp_path / "artifacts" / "manifest.json").exists()
