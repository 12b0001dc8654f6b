"""The runtime's layers: device and cloud import only the shared contract, never each
other, and nothing in the runtime imports torch or the partitioner."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "runtime":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ("device", "cloud") else "shared"


def _crossings(root: Path) -> list[str]:
    """Each import of ``root`` (a runtime package) that crosses between device and cloud."""
    crossings = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        side = relative.parts[1] if relative.parts[1] in ("device", "cloud") else "shared"
        if relative.name == "__init__.py" and len(relative.parts) == 2:
            continue  # runtime/__init__.py names the public classes, loaded lazily
        for module in _imports(path):
            other = _part(module)
            allowed = {"shared", side} if side != "shared" else {"shared"}
            if other is not None and other not in allowed:
                crossings.append(f"{relative} ({side}) imports {module} ({other})")
    return crossings


def test_device_and_cloud_import_only_the_shared_contract():
    assert not _crossings(RUNTIME), "\n".join(_crossings(RUNTIME))


def test_the_layer_check_sees_a_crossing(tmp_path):
    root = tmp_path / "runtime"
    for part in ("device", "cloud"):
        (root / part).mkdir(parents=True)
    (root / "codec.py").write_text("import numpy\n")
    (root / "device" / "edge.py").write_text("from runtime import codec\n")
    assert _crossings(root) == []
    (root / "device" / "edge.py").write_text("def f():\n    from runtime.cloud import server\n")
    (root / "codec.py").write_text("from runtime.device.edge import f\n")
    assert sorted(_crossings(root)) == [
        "runtime/codec.py (shared) imports runtime.device.edge (device)",
        "runtime/codec.py (shared) imports runtime.device.edge.f (device)",
        "runtime/device/edge.py (device) imports runtime.cloud (cloud)",
        "runtime/device/edge.py (device) imports runtime.cloud.server (cloud)",
    ]


def test_the_runtime_imports_neither_torch_nor_the_partitioner():
    script = (
        "import sys, runtime, runtime.device.adaptive, runtime.device.linkem, "
        "runtime.cloud.server, runtime.codec\n"
        "from runtime import EdgeRuntime, SplitClient, StaticSplit, create_server\n"
        "bad = [m for m in sys.modules\n"
        "       if m.split('.')[0] in ('torch', 'partitioner', 'bench', 'onnx')]\n"
        "print(','.join(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_a_device_importing_the_runtime_does_not_load_the_server():
    script = (
        "import sys, runtime\n"
        "from runtime import EdgeRuntime\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('runtime.cloud'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
