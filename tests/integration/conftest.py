"""A real splitinfer server on 127.0.0.1:0, run on its own event loop thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from partitioner import ModelGraph, enumerate_cuts, write_artifacts
from runtime.cloud.server import BackgroundServer, Security
from runtime.cloud.tails import TailHost
from tests.graphs import FAMILIES


class RunningServer(BackgroundServer):
    """A BackgroundServer the tests can also health-check."""

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

    def start(host: TailHost, security: Security | None = None, **options: Any) -> RunningServer:
        server = RunningServer(host, security=security, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-Triton tests first: in a run that had gone through the other integration
    tests, Triton once loaded its models and never said it was serving (its fixture
    now gives up after 120 s), while it starts in seconds in a fresh test process."""
    items.sort(key=lambda item: 0 if item.path.name == "test_triton.py" else 1)
