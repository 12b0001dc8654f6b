"""What a split call costs beyond its compute and its bytes: gRPC, Python and the
server's hops on both ends. A profile of a tail times the tail alone, in process;
a real call adds a fixed cost (serializing, the server's queue and thread hop,
answering, reading the answer) and a little per tensor. Measured here with two
trivial models served by a real splitinfer server, one taking one tensor and one
taking four: a call's time beyond the round trip is ``call_ms``, and what the
three extra tensors add, per tensor, is ``tensor_ms``. The same calls through a
proxy that counts bytes give what a call puts on the link beyond its tensors'
payloads (HTTP/2 and gRPC framing, headers, trailers, the messages' own fields):
about 0.3 kB a call, half a millisecond at 5 Mbit/s: enough to tip a close choice
on a slow link.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from partitioner.graph import ModelGraph
from partitioner.split import write_artifacts
from runtime.codec import Encoded, encode

MODELS = {"splitinfer_call_1": 1, "splitinfer_call_4": 4}  # model name: tensors it takes
REPEATS = 40


@dataclass(frozen=True)
class CallCost:
    """What a split call costs beyond its compute and its tensors' payloads."""

    call_ms: float  # a one-tensor call's time beyond the round trip
    tensor_ms: float  # what each further tensor adds
    # bytes on the wire: a request with no tensor, what each tensor adds beyond its
    # payload and its name, and an answer beyond its output's payload
    call_bytes: float = 0.0
    tensor_bytes: float = 0.0
    answer_bytes: float = 0.0


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
    from runtime.device.client import SplitClient

    medians = {}
    with SplitClient(target) as client:
        client.wait_ready(10)
        for name, count in MODELS.items():
            tensors = _call_tensors(count)
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


def measure_wire_bytes(target: str, *, repeats: int = REPEATS) -> tuple[float, float, float]:
    """(call_bytes, tensor_bytes, answer_bytes) of calls to a server at ``target`` that
    serves the call models, counted by a proxy in front of it (CallCost says what each
    is); averages over ``repeats`` warm calls, so that the headers' compression and
    the connection's own frames weigh as they do in a stream of requests."""
    from runtime.device.client import SplitClient
    from runtime.device.linkem import LinkEmulator
    from runtime.units import parse_address

    per_call: dict[int, tuple[float, float]] = {}
    with LinkEmulator(*parse_address(target)) as link, SplitClient(link.address) as client:
        client.wait_ready(10)
        for name, count in MODELS.items():
            tensors = _call_tensors(count)
            for _ in range(3):
                client.infer(name, "cloud", tensors, timeout=10)
            time.sleep(0.05)  # the warm-up's last bytes counted before the count starts
            before = dict(link.carried)
            for _ in range(repeats):
                client.infer(name, "cloud", tensors, timeout=10)
            time.sleep(0.05)
            per_call[count] = (
                (link.carried["up"] - before["up"]) / repeats,
                (link.carried["down"] - before["down"]) / repeats,
            )
    payload = len(_call_tensors(1)[0].payload)
    extra = MODELS["splitinfer_call_4"] - MODELS["splitinfer_call_1"]
    named = len("t0")  # the call models' tensors' names
    tensor = (per_call[4][0] - per_call[1][0]) / extra - payload - named
    call = per_call[1][0] - payload - named - tensor
    answer = per_call[1][1] - payload  # the answer's output: as big as the input
    return max(call, 0.0), max(tensor, 0.0), max(answer, 0.0)


def local_call_cost(repeats: int = REPEATS) -> CallCost:
    """This machine's call cost on loopback, through an in-process server."""
    from runtime.cloud.server import BackgroundServer
    from runtime.cloud.tails import TailHost

    with tempfile.TemporaryDirectory(prefix="splitinfer-calls-") as tmp:
        directories = write_call_models(Path(tmp))
        server = BackgroundServer(TailHost(directories))
        try:
            times = measure_call_cost(server.target, repeats=repeats)
            return CallCost(*times, *measure_wire_bytes(server.target, repeats=repeats))
        finally:
            server.stop()


def _call_tensors(count: int) -> list[Encoded]:
    return [encode(np.ones((1, 4), np.float32), name=f"t{i}") for i in range(count)]
