"""The device never answers wrong and never hides a misconfiguration: artifacts of a
retrained model against a server holding the old tails run locally (both protocols),
a wrong token and nothing listening are counted by status and a wrong token said as
a configuration error, and a target with no port is refused before anything dials."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from runtime.cloud.server import Security
from runtime.cloud.tails import TailHost
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.kserve_client import KServeClient
from runtime.engine import SessionOptions, make_session, run_session
from tests.graphs import adaptive_model, write_adaptive_artifacts

EXACT = SessionOptions(optimize=False)
OPTIONS = EdgeOptions(deadline_ms=2000, slowdown=50.0, exact=True, uplink_bps=1e9, rtt_ms=1.0)


def _retrained(directory):
    """The adaptive model with new weights (same name, same cuts): another version."""
    model, _ = adaptive_model()
    first = model.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * 1.5, first.name))
    write_adaptive_artifacts(directory, model)
    return directory


def _x(seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((1, 16384)).astype(np.float32)}


@pytest.mark.parametrize("protocol", ["splitinfer", "kserve"])
def test_a_retrained_models_artifacts_never_split_with_the_old_tails(
    protocol, tmp_path, serve, caplog
):
    old, new = tmp_path / "old", tmp_path / "new"
    write_adaptive_artifacts(old)
    _retrained(new)
    server = serve(TailHost([old], session_options=EXACT))
    client_class = SplitClient if protocol == "splitinfer" else KServeClient
    expected = run_session(make_session(new / "model.onnx", EXACT), _x())
    with EdgeRuntime(new, client_class(server.target), OPTIONS) as runtime:
        results = [runtime.infer(_x()) for _ in range(5)]
        stats, unserved, problems = runtime.stats(), runtime.unserved, runtime.problems
    assert {r.path for r in results} == {"local"}, stats
    for result in results:
        for name, value in expected.items():
            assert result.outputs[name].tobytes() == value.tobytes()
    assert set(unserved) == {"cloud", "mid"} and "MODEL_MISMATCH" in problems
    said = [r for r in caplog.records if "configuration error (MODEL_MISMATCH)" in r.getMessage()]
    assert len(said) == 1 and "another version" in said[0].getMessage()


def test_a_wrong_token_is_counted_and_said_once_as_a_configuration_error(tmp_path, serve, caplog):
    write_adaptive_artifacts(tmp_path)
    server = serve(TailHost([tmp_path], session_options=EXACT), Security(token="right"))
    with EdgeRuntime(tmp_path, SplitClient(server.target, token="wrong"), OPTIONS) as runtime:
        results = [runtime.infer(_x()) for _ in range(3)]
        failures: dict = runtime.stats()["failures"]  # type: ignore[assignment]
        problems = runtime.problems
    assert {r.path for r in results} <= {"local", "fallback"}
    assert failures.get("UNAUTHENTICATED", 0) >= 1, failures
    assert "UNAUTHENTICATED" in problems
    said = [r for r in caplog.records if "configuration error (UNAUTHENTICATED)" in r.getMessage()]
    assert len(said) == 1


def test_nothing_listening_is_counted(tmp_path, serve):
    write_adaptive_artifacts(tmp_path)
    server = serve(TailHost([tmp_path], session_options=EXACT))
    target = server.target
    server.stop()  # the port is closed: nothing listens there now
    with EdgeRuntime(tmp_path, SplitClient(target), OPTIONS) as runtime:
        result = runtime.infer(_x())
        failures: dict = runtime.stats()["failures"]  # type: ignore[assignment]
    assert result.path in ("local", "fallback")
    assert failures.get("UNAVAILABLE", 0) >= 1, failures


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("127.0.0.1", "HOST:PORT"),
        ("http://127.0.0.1:50051", "no http:// scheme"),
        ("127.0.0.1:0", "port 0"),
        ("127.0.0.1:99999", "0 to 65535"),
    ],
)
def test_a_target_a_client_cannot_dial_is_refused_in_the_library(tmp_path, target, why):
    with pytest.raises(ValueError, match=why):
        SplitClient(target)
    with pytest.raises(ValueError, match=why):
        EdgeRuntime.from_dir(tmp_path, target)
    assert SplitClient("dns:///localhost:50051").target.startswith("dns:")
