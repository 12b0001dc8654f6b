"""The edge runtime's steps with a client constructed for the test (no socket): a cut
the server does not serve is dropped without opening the circuit breaker, and the
request completes locally; the device package has no import circle."""

from __future__ import annotations

import ast
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from runtime.device.adaptive import EdgeRuntime
from runtime.device.options import EdgeOptions
from runtime.errors import NotFoundError, UnavailableError
from tests.graphs import write_adaptive_artifacts

DEVICE = Path(__file__).resolve().parents[2] / "runtime" / "device"


class _NoCutClient:
    """A server that answers probes and says NOT_FOUND to every split: the artifacts
    are newer than its tails."""

    target = "test:0"
    max_request_bytes = 4 << 20

    def __init__(self) -> None:
        self.calls: list[str] = []

    def served_cuts(self, model: str, *, timeout: float | None = None) -> tuple[set[str], int]:
        raise UnavailableError("Describe is not answered here", "UNAVAILABLE")

    def probe(self, send: int = 0, receive: int = 0, *, timeout: float | None = None):
        return 1.0, 0.0

    def start_infer(self, model: str, cut: str, tensors, *, timeout: float | None = None):
        self.calls.append(cut)
        answer: Future = Future()
        answer.set_exception(NotFoundError(f"model {model} has no cut {cut}"))
        return answer

    def close(self) -> None:
        pass


def test_an_unserved_cut_is_dropped_without_opening_the_breaker(tmp_path):
    write_adaptive_artifacts(tmp_path)
    client = _NoCutClient()
    options = EdgeOptions(slowdown=100.0, uplink_bps=1e9, rtt_ms=0.1, probe_interval_s=60)
    with EdgeRuntime(tmp_path, client, options) as runtime:  # type: ignore[arg-type]
        x = np.random.default_rng(0).standard_normal((1, 16384)).astype(np.float32)
        first = runtime.infer({"x": x})
        assert first.path == "fallback" and len(client.calls) == 1
        dropped = client.calls[0]
        stats = runtime.stats()
        assert dropped in runtime.unserved
        assert runtime.breaker.snapshot()["state"] == "closed"
        assert stats["failures"] == {"UNAVAILABLE": 1, "NOT_FOUND": 1}  # by status
        second = runtime.infer({"x": x})  # the other cut now, or locally; never the dropped
        assert dropped not in client.calls[1:]
        assert second.path in ("fallback", "local")
        (name,) = first.outputs
        np.testing.assert_allclose(second.outputs[name], first.outputs[name], rtol=1e-5)


def _device_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m.rsplit(".", 1)[-1] for m in found if m.startswith("runtime.device.")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of ``graph`` (module: modules it imports), each once."""
    found, state = [], dict.fromkeys(graph, 0)

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for other in sorted(graph.get(node, ())):
            if state.get(other) == 1:
                found.append([*trail[trail.index(other) :], other])
            elif state.get(other) == 0:
                visit(other, [*trail, other])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [node])
    return found


def test_the_device_package_has_no_import_circle():
    graph = {p.stem: _device_imports(p) for p in DEVICE.glob("*.py") if p.stem != "__init__"}
    assert "adaptive" not in graph["pipeline"]
    assert not _cycles(graph), _cycles(graph)


def test_the_circle_check_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
