"""The generated protocol modules are what scripts/gen_proto.sh makes of proto/."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("splitinfer_pb2.py", "splitinfer_pb2.pyi", "splitinfer_pb2_grpc.py")


def test_generated_modules_are_up_to_date(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, cwd=ROOT
    )
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / "runtime" / "wire" / name).read_text()
        assert fresh == committed, f"runtime/wire/{name} is stale: run scripts/gen_proto.sh"
