"""The device runtime stands alone: importing it pulls in neither torch nor the partitioner."""

from __future__ import annotations

import subprocess
import sys


def test_the_runtime_imports_neither_torch_nor_the_partitioner():
    script = (
        "import sys, runtime, runtime.adaptive, runtime.server, runtime.client, runtime.codec\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'partitioner', 'onnx')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
