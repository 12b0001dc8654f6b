"""An attacker's kit against a ``splitinfer serve`` process, and what a well-behaved
client sees meanwhile. Used by the adversarial tests and by ``python -m bench.abuse``.

Every attack talks to a real server process over loopback: raw bytes through
grpc's generic calls, or raw HTTP/2 (the ``h2`` package) for clients that
never read and streams opened and reset at once. The server's memory is its
resident set (psutil), never helped by a forced garbage collection; what a
good client sees is measured by a separate process (``Watch``), so that the
attacker's own work in this process does not delay it.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2 as kpb

from bench.processes import start_server, stop
from runtime import fastwire
from runtime.codec import CodecSpec, encode
from runtime.device.client import stream_messages
from runtime.kserve_types import DTYPES, model_name
from runtime.wire import splitinfer_pb2 as pb

MiB = 1 << 20
INFER = "/splitinfer.v1.SplitInference/Infer"
INFER_STREAM = "/splitinfer.v1.SplitInference/InferStream"
PROBE = "/splitinfer.v1.SplitInference/Probe"
DESCRIBE = "/splitinfer.v1.SplitInference/Describe"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_CONFIG = "/inference.GRPCInferenceService/ModelConfig"
HEALTH = "/grpc.health.v1.Health/Check"
BIG = 512 * MiB  # what an attacker's channel lets itself send and receive
LIMIT = 4 * MiB - 4096  # a request just under the server's default message limit


# ------------------------------------------------------------------ the workload


@dataclass(frozen=True)
class Workload:
    """A served model: its artifact directory, the cut attacked, and one valid
    request's tensors (one sample)."""

    directory: Path
    model: str
    cut: str
    tensors: dict[str, np.ndarray]

    def infer_bytes(self, *, samples: int = 1, token: str | None = None) -> bytes:
        """A valid splitinfer.v1 Infer request of ``samples`` samples."""
        encoded = [encode(_repeat(v, samples), name=k) for k, v in self.tensors.items()]
        return fastwire.write(pb.InferRequest(model=self.model, cut=self.cut), encoded)

    def kserve_request(self, *, samples: int = 1) -> kpb.ModelInferRequest:
        request = kpb.ModelInferRequest(model_name=model_name(self.model, self.cut))
        for name, value in self.tensors.items():
            value = _repeat(value, samples)
            request.inputs.add(name=name, datatype=DTYPES[value.dtype.name], shape=value.shape)
            request.raw_input_contents.append(value.tobytes())
        return request


def _repeat(value: np.ndarray, samples: int) -> np.ndarray:
    return np.repeat(value, samples, axis=0) if samples != 1 else value


def small_cnn(directory: Path) -> Workload:
    """A small convolutional network with a dynamic batch, served whole in the cloud
    (cut "cloud": the device sends the 3x32x32 input)."""
    from partitioner import ModelGraph, cut_from_tensors, write_artifacts

    rng = np.random.default_rng(0)
    nodes, weights = [], []
    x, channels = "image", 3
    for index, width in enumerate((16, 32, 32)):
        w = numpy_helper.from_array(
            (rng.standard_normal((width, channels, 3, 3)) * 0.2).astype(np.float32), f"w{index}"
        )
        weights.append(w)
        nodes.append(helper.make_node("Conv", [x, w.name], [f"c{index}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        x, channels = f"r{index}", width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["scores"]))
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = ModelGraph.load(model)
    write_artifacts(loaded, [cut_from_tensors(loaded, ["image"], cut_id="cloud")], directory)
    image = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    return Workload(directory, "small_cnn", "cloud", {"image": image})


def slow_mlp(directory: Path, layers: int = 2000, width: int = 1024) -> Workload:
    """A tail that runs for seconds: ``layers`` MatMuls of ``width`` square, on a batch
    of 256 rows (for shutdown tests: ONNX Runtime can stop between nodes)."""
    from partitioner import ModelGraph, cut_from_tensors, write_artifacts

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(
        (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "w"
    )
    nodes, x = [], "x"
    for index in range(layers):
        nodes.append(helper.make_node("MatMul", [x, "w"], [f"m{index}"]))
        x = f"m{index}"
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = ModelGraph.load(model)
    write_artifacts(loaded, [cut_from_tensors(loaded, ["x"], cut_id="cloud")], directory)
    value = rng.standard_normal((256, width)).astype(np.float32)
    return Workload(directory, "slow", "cloud", {"x": value})


# ------------------------------------------------------------------ the server


class Target:
    """A ``splitinfer serve`` process under attack: its address, memory and CPU."""

    def __init__(
        self,
        directories: Sequence[Path],
        options: Sequence[str] = (),
        *,
        token: str | None = None,
    ) -> None:
        self.process, self.port = start_server(list(directories), options=options)
        self.address = f"127.0.0.1:{self.port}"
        self.ps = psutil.Process(self.process.pid)
        self.token = token
        self.metrics_url = None
        if "--metrics-port" in options:
            assert self.process.stdout is not None
            line = self.process.stdout.readline().strip()
            self.metrics_url = line.removeprefix("metrics on ")
        self.wait_healthy()

    def metric(self, name: str) -> float:
        """One unlabelled sample of the server's Prometheus metrics (needs --metrics-port)."""
        assert self.metrics_url is not None, "start the target with --metrics-port"
        request = urllib.request.Request(self.metrics_url)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        text = urllib.request.urlopen(request, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(f"no metric {name}")

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        with grpc.insecure_channel(self.address) as channel:
            call: Any = channel.unary_unary(HEALTH)
            call(b"", timeout=timeout, wait_for_ready=True)

    def settle(self, seconds: float = 1.0) -> int:
        """The resident set once the server has been idle for ``seconds`` (requests
        finished, their memory given back): the smallest of a few readings."""
        time.sleep(seconds)
        readings = []
        for _ in range(3):
            readings.append(self.rss())
            time.sleep(0.1)
        return min(readings)

    def stop(self) -> None:
        stop(self.process)

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def channel(target: str, **options: Any) -> grpc.Channel:
    """A plain channel of its own (no connection shared with other channels)."""
    settings = [
        ("grpc.max_receive_message_length", BIG),
        ("grpc.max_send_message_length", BIG),
        ("grpc.use_local_subchannel_pool", 1),
        *options.items(),
    ]
    return grpc.insecure_channel(target, options=settings)


def raw_call(
    target: str,
    method: str,
    request: bytes,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 60.0,
) -> tuple[str, bytes]:
    """One unary call of raw bytes: (status code name, answer or details)."""
    with channel(target) as ch:
        call: Any = ch.unary_unary(method)
        try:
            return "OK", call(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code().name, (exc.details() or "").encode()


def codes_of(results: Sequence[tuple[str, bytes]]) -> dict[str, int]:
    return dict(collections.Counter(code for code, _ in results))


def parallel(work: Callable[[], Any], count: int, concurrency: int) -> list[Any]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: work(), range(count)))


# ------------------------------------------------------------------ a good client


WATCH_SCRIPT = """
import json, sys, threading, time
import grpc
target, health_every, infer_path, token = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
request = open(infer_path, "rb").read() if infer_path != "-" else None
metadata = (("authorization", "Bearer " + token),) if token != "-" else ()
options = [("grpc.max_receive_message_length", 1 << 28), ("grpc.use_local_subchannel_pool", 1)]
done = threading.Event()
health, infer, codes = [], [], {}
def check():
    with grpc.insecure_channel(target, options=options) as ch:
        call = ch.unary_unary("/grpc.health.v1.Health/Check")
        call(b"", timeout=30, wait_for_ready=True)
        while not done.is_set():
            start = time.perf_counter()
            try:
                call(b"", timeout=30)
                health.append((time.perf_counter() - start) * 1000)
            except grpc.RpcError as exc:
                codes["health " + exc.code().name] = codes.get("health " + exc.code().name, 0) + 1
            time.sleep(health_every)
def good():
    with grpc.insecure_channel(target, options=options) as ch:
        call = ch.unary_unary("/splitinfer.v1.SplitInference/Infer", _registered_method=True)
        while not done.is_set():
            start = time.perf_counter()
            try:
                call(request, timeout=30, metadata=metadata)
                infer.append((time.perf_counter() - start) * 1000)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as exc:
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
            time.sleep(0.01)
threads = [threading.Thread(target=check)] + ([threading.Thread(target=good)] if request else [])
for t in threads:
    t.start()
print("watching", flush=True)
sys.stdin.readline()
done.set()
for t in threads:
    t.join()
print(json.dumps({"health_ms": health, "infer_ms": infer, "codes": codes}), flush=True)
"""


@dataclass
class Seen:
    """What the good client saw: health-check and valid-request latencies (ms), and the
    status codes of its requests."""

    health_ms: list[float]
    infer_ms: list[float]
    codes: dict[str, int]

    @property
    def health_max_ms(self) -> float:
        return max(self.health_ms) if self.health_ms else float("inf")

    def infer_percentile(self, q: float) -> float:
        values = sorted(self.infer_ms)
        return values[int(q * (len(values) - 1))] if values else float("inf")


class Watch:
    """A separate process checking health every ``every`` seconds and, with a request,
    sending valid Infer calls back to back, until ``stop()``."""

    def __init__(
        self,
        target: str,
        request: bytes | None = None,
        *,
        token: str | None = None,
        every: float = 0.01,
    ) -> None:
        self._file = None
        path = "-"
        if request is not None:
            with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as handle:
                handle.write(request)
            self._file = path = handle.name
        self.process = subprocess.Popen(
            [sys.executable, "-c", WATCH_SCRIPT, target, str(every), path, token or "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "watching":
            raise RuntimeError("the watching client did not start")
        time.sleep(0.3)  # its first calls: connected and warm before the attack

    def stop(self) -> Seen:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        result = json.loads(self.process.stdout.readline())
        self.process.wait(timeout=30)
        if self._file:
            os.unlink(self._file)
        return Seen(result["health_ms"], result["infer_ms"], result["codes"])


# ------------------------------------------------------------------ raw HTTP/2


class RawH2:
    """A raw HTTP/2 client of gRPC calls on one connection. ``window=0`` tells the
    server it may send no data at all: a client that never reads its answers."""

    def __init__(self, target: str, *, window: int = 65535) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.authority = target
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.conn.initiate_connection()
        self.flush()
        self.reset_streams: set[int] = set()
        self.ended: dict[int, str] = {}  # stream: grpc-status
        self.pump(1.0)  # the server's settings, acknowledged: it takes streams only then

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout: float = 0.0) -> None:
        """Read what the server sent until it sends nothing for ``timeout`` seconds,
        without granting it any window for data."""
        import h2.events

        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    data = self.sock.recv(1 << 20)
                except (TimeoutError, BlockingIOError):
                    return
                if not data:
                    raise ConnectionError("the server closed the connection")
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.StreamReset):
                        self.reset_streams.add(event.stream_id)
                    elif isinstance(
                        event, (h2.events.TrailersReceived, h2.events.ResponseReceived)
                    ):
                        status = dict(event.headers).get("grpc-status")  # type: ignore[call-overload]
                        if status is not None:  # trailers, or a trailers-only answer
                            self.ended[event.stream_id] = str(status)
                self.flush()
        finally:
            self.sock.settimeout(10)

    def open(self, method: str, metadata: Sequence[tuple[str, str]] = ()) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        self.conn.send_headers(stream, headers)
        return stream

    def send(self, stream: int, message: bytes, *, end: bool = False, wait: float = 5.0) -> bool:
        """One gRPC message on ``stream``, as far as flow control allows within ``wait``
        seconds; False when the server stopped taking this stream's data."""
        framed = b"\0" + len(message).to_bytes(4, "big") + message
        offset = 0
        deadline = time.monotonic() + wait
        while offset < len(framed):
            room = min(
                self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size
            )
            if room <= 0:
                if time.monotonic() > deadline:
                    self.flush()
                    return False
                self.flush()
                self.pump(0.05)
                continue
            piece = framed[offset : offset + room]
            offset += len(piece)
            last = end and offset == len(framed)
            self.conn.send_data(stream, piece, end_stream=last)
        self.flush()
        return True

    def reset(self, stream: int) -> None:
        self.conn.reset_stream(stream)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------ the attacks


@dataclass
class Outcome:
    """What an attack got: the status codes of its calls, and anything else it noted."""

    codes: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def unauthenticated_bodies(target: str, count: int = 20, size: int = LIMIT) -> Outcome:
    """Large Infer calls without the bearer token: each is refused (UNAUTHENTICATED)."""
    body = pb.InferRequest(model="x", cut="y").SerializeToString() + bytes(size)
    results = parallel(lambda: raw_call(target, INFER, body), count, 4)
    return Outcome(codes_of(results))


def invalid_bodies(
    target: str,
    workload: Workload,
    rounds: int = 8,
    size: int = LIMIT,
    token: str | None = None,
) -> Outcome:
    """Rounds of 8 concurrent large requests for a model the server does not have."""
    tensor = encode(np.zeros(size // 4, np.float32), name="x")
    body = fastwire.write(pb.InferRequest(model="nope", cut=workload.cut), [tensor])
    metadata = [("authorization", f"Bearer {token}")] if token else []
    results = parallel(lambda: raw_call(target, INFER, body, metadata=metadata), rounds * 8, 8)
    return Outcome(codes_of(results))


def batch_amplification(target: str, workload: Workload, samples: int = 4096) -> Outcome:
    """A few kilobytes of zstd that decode to ``samples`` samples (beyond the tail's
    max_batch_size), on both protocols; then the most samples allowed."""
    results = []
    for count in (samples, 33):
        tensors = [
            encode(np.zeros((count, *v.shape[1:]), v.dtype), CodecSpec.parse("zstd"), name=k)
            for k, v in workload.tensors.items()
        ]
        body = fastwire.write(pb.InferRequest(model=workload.model, cut=workload.cut), tensors)
        results += parallel(partial(raw_call, target, INFER, body), 4, 2)
        kserve = workload.kserve_request(samples=count).SerializeToString()
        results.append(raw_call(target, MODEL_INFER, kserve))
    tensors = [
        encode(np.zeros((32, *v.shape[1:]), v.dtype), CodecSpec.parse("zstd"), name=k)
        for k, v in workload.tensors.items()
    ]
    allowed = fastwire.write(pb.InferRequest(model=workload.model, cut=workload.cut), tensors)
    results += parallel(lambda: raw_call(target, INFER, allowed), 8, 4)
    return Outcome(codes_of(results), {"request_bytes": len(allowed)})


def probe_flood(target: str, count: int = 64, size: int = 4 * MiB) -> Outcome:
    """Probes asking for ``size``-byte answers from connections that never read them."""
    clients = [RawH2(target, window=0) for _ in range(max(1, count // 8))]
    request = pb.ProbeRequest(response_size=size).SerializeToString()
    streams = []
    for index in range(count):
        client = clients[index % len(clients)]
        stream = client.open(PROBE)
        client.send(stream, request, end=True)
        streams.append((client, stream))
    time.sleep(2.0)
    for client in clients:
        client.pump(0.2)
    codes = collections.Counter(
        _status_name(client.ended.get(stream, "pending")) for client, stream in streams
    )
    return Outcome(dict(codes), {"clients": clients})


def _status_name(value: str) -> str:
    """A grpc-status header's value as the code's name (other values as they are)."""
    return _code(int(value)) if value.isdigit() else value


def close_all(outcome: Outcome) -> None:
    """Close the raw connections an attack left open (its clients went away)."""
    for client in outcome.notes.pop("clients", []):
        client.close()


def group_messages(target: str, size: int = LIMIT) -> Outcome:
    """A message that is one protobuf group (wire type 3) of ``size`` bytes, on every
    method that reads bytes."""
    body = b"\x33" + b"\x08\x01" * (size // 2) + b"\x34"
    methods = [INFER, PROBE, DESCRIBE, MODEL_INFER, MODEL_CONFIG, HEALTH]
    results = [raw_call(target, method, body) for method in methods]
    with channel(target) as ch:
        call: Any = ch.stream_stream(INFER_STREAM)
        try:
            answers = list(call(iter([body]), timeout=60))
            errors = [pb.StreamResponse.FromString(a).error.code for a in answers]
            results.append(("stream " + ",".join(map(str, errors)), b""))
        except grpc.RpcError as exc:
            results.append((exc.code().name, b""))
    return Outcome(codes_of(results))


def typed_contents(target: str, workload: Workload, size: int = LIMIT) -> Outcome:
    """KServe requests carrying their values typed (``fp32_contents``, ``int_contents``)
    instead of raw: a count that fits the shape (the most samples allowed), one that
    does not (a message of ``size`` bytes), and integers (as many varints) sent for a
    float input."""
    name, value = next(iter(workload.tensors.items()))
    sample = int(np.prod(value.shape[1:]))
    samples = max(1, min(32, (size // 4 - 64) // sample))  # as many as fit in a message
    fitting = kpb.ModelInferRequest(model_name=model_name(workload.model, workload.cut))
    tensor = fitting.inputs.add(name=name, datatype="FP32", shape=[samples, *value.shape[1:]])
    tensor.contents.fp32_contents.extend(np.ones(samples * sample, np.float32).tolist())
    wrong_count = kpb.ModelInferRequest(model_name=fitting.model_name)
    tensor = wrong_count.inputs.add(name=name, datatype="FP32", shape=[1, *value.shape[1:]])
    tensor.contents.fp32_contents.extend(np.ones(size // 4 - 64, np.float32).tolist())
    integers = kpb.ModelInferRequest(model_name=fitting.model_name)
    tensor = integers.inputs.add(name=name, datatype="INT32", shape=[1, *value.shape[1:]])
    tensor.contents.int_contents.extend(np.ones(size - 256, np.int32).tolist())
    results = [
        raw_call(target, MODEL_INFER, request.SerializeToString())
        for request in (fitting, wrong_count, integers)
    ]
    return Outcome(codes_of(results), {"fitting_values": samples * sample})


def stream_header_lie(target: str, chunks: int = 256, streams: int = 2) -> Outcome:
    """InferStream: a header claiming a 1 GiB tensor for a model that does not exist,
    then ``chunks`` MiB of chunks for it, on each of ``streams`` streams."""
    header = pb.InferRequest(model="nope", cut="c1", request_id="r")
    header.tensors.add(
        name="x", dtype="float32", shape=[1 << 28], codec="raw", payload_size=1 << 30
    )
    data = bytes(MiB)

    def messages() -> Iterator[bytes]:
        yield pb.StreamRequest(request=header).SerializeToString()
        for _ in range(chunks):
            yield pb.StreamRequest(chunk=pb.Chunk(request_id="r", data=data)).SerializeToString()

    def one() -> list[int]:
        with channel(target) as ch:
            streaming: Any = ch.stream_stream(INFER_STREAM)
            answers = streaming(messages(), timeout=120)
            return [pb.StreamResponse.FromString(a).error.code for a in answers]

    results = parallel(one, streams, streams)
    codes = collections.Counter(
        grpc.StatusCode.OK.name if c == 0 else _code(c) for r in results for c in r
    )
    return Outcome(dict(codes), {"answers_per_stream": [len(r) for r in results]})


def _code(value: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == value), str(value))


def unread_streams(
    target: str, workload: Workload, count: int = 50, requests: int = 200
) -> Outcome:
    """``count`` InferStreams that send valid requests and never read an answer (each
    connection's window is shut), spread over connections of 8 streams."""
    per = 8
    clients = [RawH2(target, window=0) for _ in range((count + per - 1) // per)]
    encoded = [encode(v, name=k) for k, v in workload.tensors.items()]
    sent = 0
    streams = []
    for index in range(count):
        client = clients[index // per]
        stream = client.open(INFER_STREAM)
        streams.append((client, stream))
    stalled: set[tuple[int, int]] = set()  # (client, stream) whose window the server shut
    for round_ in range(requests):
        for index, (client, stream) in enumerate(streams):
            if (index, stream) in stalled or stream in client.ended:
                continue
            if stream in client.reset_streams:
                continue
            request_id = f"{stream}-{round_}"
            for message in stream_messages(workload.model, workload.cut, encoded, request_id, MiB):
                if not client.send(stream, message.SerializeToString(), wait=0.5):
                    stalled.add((index, stream))
                    break
                sent += 1
        if len(stalled) == len(streams):
            break
    time.sleep(1.0)
    for client in clients:
        client.pump(0.2)
    codes = collections.Counter(
        _status_name(client.ended.get(stream, "open")) for client, stream in streams
    )
    return Outcome(dict(codes), {"clients": clients, "requests_sent": sent})


def malformed_in_stream(target: str, workload: Workload) -> Outcome:
    """[valid a, garbage, valid b, valid c] on one InferStream: every request answered."""
    encoded = [encode(v, name=k) for k, v in workload.tensors.items()]

    def valid(request_id: str) -> list[bytes]:
        return [
            m.SerializeToString()
            for m in stream_messages(workload.model, workload.cut, encoded, request_id, MiB)
        ]

    messages = [*valid("a"), b"\xff\xff\xff", *valid("b"), *valid("c")]
    with channel(target) as ch:
        streaming: Any = ch.stream_stream(INFER_STREAM)
        call = streaming(iter(messages), timeout=60)
        answers = [pb.StreamResponse.FromString(a) for a in call]
        status = call.code().name
    seen = [
        ("error " + _code(a.error.code))
        if a.WhichOneof("item") == "error"
        else a.response.request_id
        for a in answers
    ]
    return Outcome({status: 1}, {"answers": seen})


def rapid_reset(target: str, streams: int = 20_000) -> Outcome:
    """Open-then-reset ``streams`` streams on one connection (HTTP/2 rapid reset)."""
    client = RawH2(target)
    opened = 0
    closed_early = False
    try:
        for _ in range(streams):
            stream = client.open(INFER)
            client.reset(stream)
            opened += 1
            if opened % 100 == 0:
                client.flush()
                client.pump(0.0)
        client.flush()
        client.pump(0.5)
    except (ConnectionError, OSError):
        closed_early = True
    finally:
        client.close()
    return Outcome({"RESET": opened}, {"connection_closed_by_server": closed_early})


def long_name(target: str, length: int = 60_000) -> Outcome:
    """A request naming a model of ``length`` characters: the answer's message is short."""
    name = "m" * length
    body = fastwire.write(pb.InferRequest(model=name, cut="c1"), [])
    code, details = raw_call(target, INFER, body)
    return Outcome({code: 1}, {"details_bytes": len(details)})


def duplicate_tokens(target: str, token: str) -> Outcome:
    """The right token with a wrong one beside it, in both orders."""
    body = fastwire.write(pb.InferRequest(model="x", cut="y"), [])
    results = [
        raw_call(target, DESCRIBE, b"", metadata=[("authorization", a), ("authorization", b)])
        for a, b in ((f"Bearer {token}", "Bearer wrong"), ("Bearer wrong", f"Bearer {token}"))
    ]
    results.append(raw_call(target, INFER, body, metadata=[("authorization", f"Bearer {token}")]))
    return Outcome(codes_of(results))


# a timer for the benchmark and the tests: the RSS peak while something runs


class PeakRSS:
    """Samples a process's resident set every 20 ms while in use; ``peak`` after."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.peak = target.rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            try:
                self.peak = max(self.peak, self.target.rss())
            except psutil.Error:
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
