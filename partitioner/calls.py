"""What a split call costs beyond its compute and its bytes: gRPC, Python and the
server's hops on both ends. A profile of a tail times the tail alone, in process;
a real call adds a fixed cost (serializing, the server's queue and thread hop,
answering, reading the answer) and a little per tensor. Measured here with two
trivial models served by a real splitinfer server, one taking one tensor and one
taking four: a call's time beyond the round trip is ``call_ms``, and what the
three extra tensors add, per tensor, is ``tensor_ms``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from partitioner.graph import ModelGraph
from partitioner.split import write_artifacts

MODELS = {"splitinfer_call_1": 1, "splitinfer_call_4": 4}  # model name: tensors it takes
REPEATS = 40


def write_call_models(directory: Path) -> list[Path]:
    """Artifact directories for the two trivial models (cut ``cloud``: every input sent)."""
    from partitioner.cuts import cut_by_id

    directories = []
    for name, count in MODELS.items():
        inputs = [
            helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, ["N", 4])
            for i in range(count)
        ]
        nodes, last = [], "t0"
        for i in range(1, count):
            nodes.append(helper.make_node("Add", [last, f"t{i}"], [f"s{i}"]))
            last = f"s{i}"
        nodes.append(helper.make_node("Relu", [last], ["y"]))
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
        graph = helper.make_graph(nodes, name, inputs, [output])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        loaded = ModelGraph.load(model)
        target = directory / name
        write_artifacts(loaded, [cut_by_id(loaded, "cloud")], target)
        directories.append(target)
    return directories


def measure_call_cost(
    target: str, *, rtt_ms: float = 0.0, repeats: int = REPEATS
) -> tuple[float, float]:
    """(call_ms, tensor_ms) against a server at ``target`` that serves the call models
    (write_call_models), ``rtt_ms`` being the link's round trip: the median time of a
    one-tensor call beyond it, and per tensor what a four-tensor call adds."""
    from runtime.codec import encode
    from runtime.device.client import SplitClient

    medians = {}
    with SplitClient(target) as client:
        client.wait_ready(10)
        for name, count in MODELS.items():
            tensors = [encode(np.ones((1, 4), np.float32), name=f"t{i}") for i in range(count)]
            for _ in range(3):
                client.infer(name, "cloud", tensors, timeout=10)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                client.infer(name, "cloud", tensors, timeout=10)
                times.append((time.perf_counter() - start) * 1000)
            medians[count] = statistics.median(times)
    call_ms = max(medians[1] - rtt_ms, 0.0)
    tensor_ms = max((medians[4] - medians[1]) / 3, 0.0)
    return call_ms, tensor_ms


def local_call_cost(repeats: int = REPEATS) -> tuple[float, float]:
    """(call_ms, tensor_ms) of this machine on loopback, through an in-process server."""
    from runtime.cloud.server import BackgroundServer
    from runtime.cloud.tails import TailHost

    with tempfile.TemporaryDirectory(prefix="splitinfer-calls-") as tmp:
        directories = write_call_models(Path(tmp))
        server = BackgroundServer(TailHost(directories))
        try:
            return measure_call_cost(server.target, repeats=repeats)
        finally:
            server.stop()
