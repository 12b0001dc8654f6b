"""Random bytes on every RPC, reflection, and the serve command's life cycle."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kpb

from runtime.cloud.kserve import KServeServicer
from runtime.cloud.tails import TailHost
from runtime.device.client import SplitClient
from runtime.errors import NotFoundError

METHODS = {
    "/splitinfer.v1.SplitInference/Infer": "unary",
    "/splitinfer.v1.SplitInference/Describe": "unary",
    "/splitinfer.v1.SplitInference/Probe": "unary",
    "/splitinfer.v1.SplitInference/InferStream": "stream",
    **{
        f"/inference.GRPCInferenceService/{m.name}": "stream" if m.client_streaming else "unary"
        for m in kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    },
    "/grpc.health.v1.Health/Check": "unary",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "stream",
}


def _identity(data: bytes) -> bytes:
    return data


def test_random_bytes_on_every_rpc_never_crash_the_server(resnet_artifacts, serve):
    server = serve(TailHost([resnet_artifacts[0]]))
    channel = grpc.insecure_channel(server.target)
    calls = {
        name: (
            channel.unary_unary(name, request_serializer=_identity, response_deserializer=_identity)
            if kind == "unary"
            else channel.stream_stream(
                name, request_serializer=_identity, response_deserializer=_identity
            )
        )
        for name, kind in METHODS.items()
    }
    seen: set[grpc.StatusCode] = set()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        method=st.sampled_from(sorted(METHODS)),
        messages=st.lists(st.binary(max_size=300), min_size=1, max_size=3),
    )
    def poke(method, messages):
        try:
            if METHODS[method] == "unary":
                calls[method](messages[0], timeout=5)
            else:
                list(calls[method](iter(messages), timeout=5))
            seen.add(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            allowed: tuple[grpc.StatusCode, ...] = (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
            )
            service, name = method.strip("/").split("/")
            if service == "inference.GRPCInferenceService" and not hasattr(KServeServicer, name):
                allowed = (grpc.StatusCode.UNIMPLEMENTED,)  # KServe RPCs splitinfer lacks
            assert exc.code() in allowed, (method, exc.code(), exc.details())
            seen.add(exc.code())

    try:
        poke()
    finally:
        channel.close()
    server.wait_healthy()
    with SplitClient(server.target) as client:
        assert client.describe().models
    assert len(seen) >= 2


def test_health_and_reflection_refuse_bytes_that_do_not_parse(resnet_artifacts, serve):
    server = serve(TailHost([resnet_artifacts[0]]))
    garbage = b"\xff\xff\xff"  # a field tag that never ends: no message parses it
    options = {"request_serializer": _identity, "response_deserializer": _identity}
    with grpc.insecure_channel(server.target) as channel:
        calls = [
            lambda: channel.unary_unary("/grpc.health.v1.Health/Check", **options)(
                garbage, timeout=5
            ),
            lambda: next(
                channel.unary_stream("/grpc.health.v1.Health/Watch", **options)(garbage, timeout=5)
            ),
            lambda: list(
                channel.stream_stream(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **options
                )(iter([garbage]), timeout=5)
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
            assert "not a valid" in (caught.value.details() or "")
        # and what does parse is answered as before
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="splitinfer.v1.SplitInference")
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        watching = health.Watch(request, timeout=5)
        assert next(watching).status == health_pb2.HealthCheckResponse.SERVING
        watching.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(resnet_artifacts, serve):
    server = serve(TailHost([resnet_artifacts[0]]))
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "splitinfer.v1.SplitInference",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names


@contextlib.contextmanager
def _serving(*arguments: str) -> Iterator[subprocess.Popen[str]]:
    """``splitinfer serve ARGUMENTS`` as a process; killed if the test leaves it running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "partitioner.cli", "serve", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_serve_prints_where_it_listens_and_stops_gracefully_on_sigterm(resnet_artifacts):
    with _serving(str(resnet_artifacts[0]), "--port", "0") as process:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with SplitClient(f"127.0.0.1:{port}") as client:
            client.wait_ready(10)
            assert client.describe().models
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_serve_with_metrics_says_where_they_are_and_they_count_the_calls(resnet_artifacts):
    with _serving(str(resnet_artifacts[0]), "--port", "0", "--metrics-port", "0") as process:
        assert process.stdout is not None
        port = int(process.stdout.readline().strip().rsplit(":", 1)[1])
        metrics = process.stdout.readline().strip()
        assert metrics.startswith("metrics on http://127.0.0.1:"), metrics
        with SplitClient(f"127.0.0.1:{port}") as client:
            client.wait_ready(10)
            with pytest.raises(NotFoundError):
                client.infer("resnet", "no-such-cut", [])
        url = metrics.removeprefix("metrics on ")
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'status="NOT_FOUND"} 1.0' in text, text[:2000]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_serve_with_a_bad_directory_is_one_line_and_exit_2(tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "partitioner.cli", "serve", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "manifest.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 60
