"""KServe v2 REST with the stock tritonclient.http (sync and asyncio), the statistics
extension on both protocols, and Triton's metric names, on a real server."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from runtime.cloud.tails import TailHost
from runtime.engine import SessionOptions, make_session, run_session
from tests.graphs import write_adaptive_artifacts

EXACT = SessionOptions(optimize=False)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rest")
    write_adaptive_artifacts(directory)
    return directory


@pytest.fixture
def server(artifacts, serve):
    return serve(TailHost([artifacts], session_options=EXACT), http=True)


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 16384)).astype(np.float32)


def _expected(artifacts, x):
    tail = make_session(artifacts / "cuts" / "cloud" / "tail.onnx", EXACT)
    return run_session(tail, {"x": x})["matmul11"]


def test_health_metadata_config_and_infer_json_and_binary(artifacts, server):
    client = triton_http.InferenceServerClient(server.http_target)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("adaptive__cloud")
    assert not client.is_model_ready("nothing")
    assert "statistics" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("adaptive__cloud")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16384]}]
    config = client.get_model_config("adaptive__cloud")
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == ["16384"]
    # normalized as Triton answers it: the latest version, a named instance group
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["instance_group"][0]["name"] == "adaptive__cloud_0"
    x = _x(3)
    for binary in (True, False):
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = triton_http.InferRequestedOutput("matmul11", binary_data=binary)
        result = client.infer("adaptive__cloud", [tensor], outputs=[wanted], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("matmul11"), _expected(artifacts, x))
        assert result.get_response()["id"] == "r1"
    names = [m["name"] for m in client.get_model_repository_index()]
    assert names == ["adaptive__cloud", "adaptive__mid"]


def test_a_batch_beyond_max_batch_size_and_bad_json_are_400(server):
    client = triton_http.InferenceServerClient(server.http_target)
    big = _x(33)
    tensor = triton_http.InferInput("x", list(big.shape), "FP32")
    tensor.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("adaptive__cloud", [tensor])
    assert refused.value.status() == "400" and "at most 32" in refused.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nothing")
    assert unknown.value.status() == "404"
    request = urllib.request.Request(
        f"http://{server.http_target}/v2/models/adaptive__cloud/infer", data=b"{not json"
    )
    with pytest.raises(urllib.error.HTTPError) as garbage:
        urllib.request.urlopen(request, timeout=10)
    assert garbage.value.code == 400 and b"not JSON" in garbage.value.read()
    assert client.is_server_live()


def test_the_asyncio_client_infers_too(artifacts, server):
    async def run():
        async with triton_aio.InferenceServerClient(server.http_target) as client:
            assert await client.is_server_ready()
            x = _x(2, seed=1)
            tensor = triton_aio.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            results = await asyncio.gather(
                *(client.infer("adaptive__cloud", [tensor]) for _ in range(4))
            )
            return x, [r.as_numpy("matmul11") for r in results]

    x, outputs = asyncio.run(run())
    for output in outputs:
        np.testing.assert_array_equal(output, _expected(artifacts, x))


def _metrics(server) -> dict[str, float]:
    """The unlabelled-by-protocol Triton samples of the cloud tail."""
    http, port = server.metrics.serve("127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        http.shutdown()
    found = {}
    for line in text.decode().splitlines():
        if line.startswith("nv_") and 'model="adaptive__cloud"' in line:
            found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return found


def test_statistics_and_triton_metrics_count_every_request_of_both_protocols(server):
    rest = triton_http.InferenceServerClient(server.http_target)
    grpc_client = triton_grpc.InferenceServerClient(server.target)
    x = _x(2)
    for _ in range(3):  # 3 REST requests of 2 samples
        tensor = triton_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        rest.infer("adaptive__cloud", [tensor])
    for _ in range(2):  # 2 gRPC requests of 2 samples
        tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        grpc_client.infer("adaptive__cloud", [tensor])
    bad = triton_grpc.InferInput("x", [2, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 3), np.float32))
    with pytest.raises(InferenceServerException):
        grpc_client.infer("adaptive__cloud", [bad])  # one failure
    (stats,) = rest.get_inference_statistics("adaptive__cloud")["model_stats"]
    success = stats["inference_stats"]["success"]
    assert success["count"] == 5 and stats["inference_count"] == 10
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["execution_count"] == 5  # an exact server runs each request alone
    assert stats["inference_stats"]["compute_infer"]["ns"] > 0
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == 5
    over_grpc = grpc_client.get_inference_statistics("adaptive__cloud", as_json=True)
    assert int(over_grpc["model_stats"][0]["inference_stats"]["success"]["count"]) == 5
    metrics = _metrics(server)
    assert metrics["nv_inference_request_success"] == 5
    assert metrics["nv_inference_request_failure"] == 1
    assert metrics["nv_inference_count"] == 10 and metrics["nv_inference_exec_count"] == 5
    assert metrics["nv_inference_request_duration_us"] >= success["ns"] // 1000
    assert metrics["nv_inference_pending_request_count"] == 0


def test_rest_needs_the_token_but_health_does_not(artifacts, serve):
    from runtime.cloud.server import Security

    server = serve(TailHost([artifacts]), Security(token="s3cret"), http=True)
    client = triton_http.InferenceServerClient(server.http_target)
    assert client.is_server_live()
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("adaptive__cloud")
    assert refused.value.status() == "401"
    headers = {"Authorization": "Bearer s3cret"}
    assert client.get_model_metadata("adaptive__cloud", headers=headers)["name"]


def test_classification_is_refused_and_unknown_routes_answer_json(server):
    """class_count (the classification extension, not advertised) is refused on both
    protocols rather than answered with the whole tensor; a route the server does not
    have answers a JSON error tritonclient can read; parameters that are no object
    are a 400."""
    x = _x(1)
    rest = triton_http.InferenceServerClient(server.http_target)
    tensor = triton_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    (output,) = rest.get_model_metadata("adaptive__cloud")["outputs"]
    wanted = triton_http.InferRequestedOutput(output["name"], class_count=3)
    with pytest.raises(InferenceServerException) as refused:
        rest.infer("adaptive__cloud", [tensor], outputs=[wanted])
    assert refused.value.status() == "400" and "class_count" in refused.value.message()
    grpc_client = triton_grpc.InferenceServerClient(server.target)
    typed = triton_grpc.InferInput("x", list(x.shape), "FP32")
    typed.set_data_from_numpy(x)
    asked = triton_grpc.InferRequestedOutput(output["name"], class_count=3)
    with pytest.raises(InferenceServerException) as over_grpc:
        grpc_client.infer("adaptive__cloud", [typed], outputs=[asked])
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    request = urllib.request.Request(f"http://{server.http_target}/v2/nothing/here")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=10)
    assert missing.value.code == 404
    assert missing.value.headers["Content-Type"].startswith("application/json")
    assert "error" in json.loads(missing.value.read())
    body = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}],
            "outputs": [{"name": output["name"], "parameters": [1]}],
        }
    ).encode()
    infer = f"http://{server.http_target}/v2/models/adaptive__cloud/infer"
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(urllib.request.Request(infer, data=body), timeout=10)
    assert bad.value.code == 400, bad.value.read()
    assert rest.is_server_live()


def test_the_bearer_scheme_is_case_insensitive_and_bad_bytes_are_401(artifacts, serve):
    from runtime.cloud.server import Security

    server = serve(TailHost([artifacts]), Security(token="s3cret"), http=True)
    client = triton_http.InferenceServerClient(server.http_target)
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} s3cret"}
        assert client.get_model_metadata("adaptive__cloud", headers=headers)["name"]
    with pytest.raises(InferenceServerException) as wrong:
        client.get_model_metadata("adaptive__cloud", headers={"Authorization": "Basic s3cret"})
    assert wrong.value.status() == "401"
    import socket

    with socket.create_connection(("127.0.0.1", int(server.http_target.split(":")[1]))) as raw:
        raw.sendall(
            b"GET /v2/models/adaptive__cloud HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert client.is_server_live()


def test_rest_bodies_are_bounded_as_they_arrive_and_bad_shapes_are_400s(artifacts, serve):
    """An announced body holds no memory before it arrives; a body beyond the limit is
    a 413; JSON nested past the parser's depth, a number too large for any tensor and
    a header length in other digits are 400s, never 500s."""
    import socket

    from runtime.cloud.tails import HostLimits

    limits = HostLimits(max_http_body_bytes=1 << 20, body_timeout_s=1.0)
    server = serve(TailHost([artifacts], limits=limits), http=True)
    port = int(server.http_target.split(":")[1])
    infer = "/v2/models/adaptive__cloud/infer"
    with socket.create_connection(("127.0.0.1", port)) as announced:
        announced.sendall(
            f"POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n".encode()
        )
        answer = announced.recv(4096)  # nothing more was sent: the body timeout answers
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]

    def post(body: bytes, headers: dict | None = None) -> int:
        request = urllib.request.Request(
            f"http://{server.http_target}{infer}", data=body, headers=headers or {}
        )
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.headers["Content-Type"].startswith("application/json")
            return exc.code
        return 200

    assert post(b"0" * (2 << 20)) == 413
    assert post(b"[" * 100_000 + b"]" * 100_000) == 400
    huge = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [10**400]}]}
    assert post(json.dumps(huge).encode()) == 400
    assert post(b"{}", {"Inference-Header-Content-Length": "\u00b2"}) == 400
    client = triton_http.InferenceServerClient(server.http_target)
    assert client.is_server_live()
