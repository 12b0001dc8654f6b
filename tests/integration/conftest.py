"""A real splitinfer server on 127.0.0.1:0, run on its own event loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from partitioner import ModelGraph, enumerate_cuts, write_artifacts
from runtime.server import Security, create_server
from runtime.tails import TailHost
from tests.graphs import FAMILIES


class RunningServer:
    """create_server() on a private event loop in a thread; stop() in teardown."""

    def __init__(self, host: TailHost, security: Security | None = None) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self._call(
            create_server("127.0.0.1:0", host, security=security or Security())
        )
        self._call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def wait_healthy(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        channel = (
            grpc.secure_channel(
                self.target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
            )
            if credentials
            else grpc.insecure_channel(self.target)
        )
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=""), wait_for_ready=True, timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        self._call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def resnet_artifacts(tmp_path_factory) -> tuple[Path, onnx.ModelProto]:
    """Every enumerated cut of the ResNet-style test graph, written once."""
    directory = tmp_path_factory.mktemp("resnet")
    model = FAMILIES["resnet"]()
    graph = ModelGraph.load(model)
    write_artifacts(graph, enumerate_cuts(graph), directory)
    return directory, model


@pytest.fixture
def serve() -> Iterator:
    started: list[RunningServer] = []

    def start(host: TailHost, security: Security | None = None) -> RunningServer:
        server = RunningServer(host, security)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
