"""splitinfer's device side against a real Triton: a Triton server (from the
nvidia-pytriton wheel, Python backend) serves the tails of an artifact directory,
and StaticSplit and EdgeRuntime split against it, outputs equal to the full model.

The wheel pins numpy<2, so it lives in a virtual environment of its own
(``.triton-venv``, made by scripts/setup.sh; the test is skipped, saying why, where
there is none). Its Python backend's stub is linked against a system libpython
(``/lib/x86_64-linux-gnu/libpython3.11.so``) that may differ from the Python of
that environment (here a newer 3.11, whose standard library the stub then fails
to run: ``'_thread.RLock' object has no attribute '_recursion_count'``); the test
puts that Python's own library directory first on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.edge import StaticSplit
from runtime.device.kserve_client import KServeClient
from runtime.engine import make_session, run_session
from tests.graphs import write_adaptive_artifacts

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = ROOT / ".triton-venv" / "bin" / "python"
SERVE = ROOT / "tests" / "triton" / "serve_tails.py"
STARTUP_S = 120  # Triton loads each tail in a process of its own: seconds, not minutes


def _has_pytriton() -> str | None:
    """Why the test cannot run here, or None."""
    if not TRITON_PYTHON.exists():
        return f"no {TRITON_PYTHON.parent.parent.name} (scripts/setup.sh makes it)"
    probe = subprocess.run(
        [str(TRITON_PYTHON), "-c", "import pytriton, onnxruntime"], capture_output=True
    )
    return None if probe.returncode == 0 else "pytriton does not import in .triton-venv"


def _free_port() -> int:
    # Triton cannot listen on port 0 and say which port it got, so a free port is found
    # here (and a taken one retried, below)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    reason = _has_pytriton()
    if reason is not None:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("triton")
    write_adaptive_artifacts(directory)
    libdir = subprocess.run(
        [str(TRITON_PYTHON), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {**os.environ, "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    for _ in range(3):
        grpc_port, http_port = _free_port(), _free_port()
        process = subprocess.Popen(
            [str(TRITON_PYTHON), str(SERVE), str(directory), str(grpc_port), str(http_port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # Triton's own processes go with it, whatever happens
        )
        if _serving(process, STARTUP_S):
            break
        _end(process)  # it ended (a port was taken) or hung: try again, on other ports
    else:
        pytest.fail(f"Triton did not say it was serving within {STARTUP_S} s, three times")
    client = KServeClient(f"127.0.0.1:{grpc_port}")
    client.wait_ready(60)
    yield directory, f"127.0.0.1:{grpc_port}"
    client.close()
    _end(process)


def _serving(process: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``process`` prints "serving" (after its log lines) within ``timeout_s``;
    its output goes on being read after that, or a full pipe would stop Triton."""
    said = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "serving":
                said.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not said.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
    return True


def _end(process: subprocess.Popen) -> None:
    """Stop the server and every process it started (SIGINT, then SIGKILL)."""
    for sig, wait_s in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _x(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 16384)).astype(np.float32)}


def test_static_splits_against_a_real_triton_equal_the_full_model(triton):
    directory, target = triton
    full = make_session(directory / "model.onnx")
    with KServeClient(target) as client:
        for cut in ("cloud", "mid"):
            result = StaticSplit(directory, client, cut=cut).infer(_x(1))
            (expected,) = run_session(full, _x(1)).values()
            np.testing.assert_allclose(result.outputs["matmul11"], expected, rtol=1e-5, atol=1e-6)
            assert result.path == "split" and result.timing["server_ms"] == 0.0  # Triton: unknown


def test_the_edge_runtime_splits_against_a_real_triton(triton):
    directory, target = triton
    full = make_session(directory / "model.onnx")
    # a device slow enough that sending the input to the cloud pays
    options = EdgeOptions(deadline_ms=5000, slowdown=200.0, uplink_bps=1e9, rtt_ms=1.0)
    with EdgeRuntime(directory, KServeClient(target), options) as runtime:
        results = [runtime.infer(_x(seed)) for seed in range(12)]
        stats = runtime.stats()
    assert "split" in {r.path for r in results}, stats
    for seed, result in enumerate(results):
        (expected,) = run_session(full, _x(seed)).values()
        np.testing.assert_allclose(result.outputs["matmul11"], expected, rtol=1e-5, atol=1e-6)
