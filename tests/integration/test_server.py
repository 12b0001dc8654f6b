"""The cloud server over real gRPC on loopback: every cut and codec, streams,
every kind of bad input, limits and deadlines."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import zstandard

from partitioner import ModelGraph, enumerate_cuts, write_artifacts
from partitioner.plan import Link, Planner
from partitioner.profile import ProfileOptions, profile_model
from runtime.artifacts import load_manifest
from runtime.cloud.batching import BatchOptions
from runtime.cloud.tails import HostLimits, TailHost
from runtime.codec import Codec, CodecSpec, encode
from runtime.device.client import SplitClient, stream_messages
from runtime.device.edge import StaticSplit
from runtime.device.linkem import LinkEmulator
from runtime.engine import CutRunner, SessionOptions, example_feeds
from runtime.errors import (
    DeadlineError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    RemoteError,
)
from runtime.units import parse_address
from runtime.wire import splitinfer_pb2 as pb
from tests.graphs import Builder, run

EXACT = SessionOptions(optimize=False)
LOSSLESS = ["raw", "zstd", "zstd+shuffle"]
LOSSY = ["fp16+zstd", "int8+zstd", "int8+zstd/axis1"]


@pytest.fixture(scope="module")
def host(resnet_artifacts):
    directory, _ = resnet_artifacts
    return TailHost([directory], session_options=EXACT)


def test_every_cut_and_codec_gives_the_full_models_outputs(resnet_artifacts, host, serve):
    directory, model = resnet_artifacts
    server = serve(host)
    manifest = load_manifest(directory)
    feeds = example_feeds(manifest.inputs, batch=3)
    expected = run(model, feeds)
    (output,) = expected
    profile = profile_model(
        ModelGraph.load(model),
        feeds,
        ProfileOptions(
            batch=3,  # the same request as below: quantization ranges span the batch
            repeats=1,
            warmup=0,
            min_time_ms=0,
            codecs=tuple(CodecSpec.parse(c) for c in LOSSY),
        ),
        progress=False,
    )
    with SplitClient(server.target) as client:
        for cut in manifest.cuts:
            if cut.tail is None:
                continue
            for label in LOSSLESS + LOSSY:
                split = StaticSplit(
                    directory, client, cut=cut.id, codec=CodecSpec.parse(label), options=EXACT
                )
                result = split.infer(feeds)
                got, want = result.outputs[output], expected[output]
                if label in LOSSLESS:
                    np.testing.assert_array_equal(got, want, err_msg=f"{cut.id} {label}")
                else:
                    bound = profile.cut(cut.id).errors[label].rel_l2
                    error = np.linalg.norm(got - want) / np.linalg.norm(want)
                    assert error <= bound * 1.01 + 1e-6, (cut.id, label, error, bound)
                assert result.path == "split" and result.cut == cut.id
                assert set(result.timing) >= {
                    "head_ms",
                    "encode_ms",
                    "network_ms",
                    "server_ms",
                    "decode_ms",
                }


def test_the_plan_prices_every_byte_a_split_call_puts_on_the_link(resnet_artifacts, host, serve):
    """Beyond its tensors' payloads a call carries framing, headers, trailers and its
    messages' own fields, a few hundred bytes (half a millisecond at 5 Mbit/s): the
    plan's transfer and return times are those of the bytes a proxy counts on the link."""
    directory, model = resnet_artifacts
    server = serve(host)
    manifest = load_manifest(directory)
    feeds = example_feeds(manifest.inputs, batch=1)
    graph = ModelGraph.load(model)
    options = ProfileOptions(
        repeats=1, warmup=0, rounds=1, min_time_ms=0, codecs=(CodecSpec.parse("raw"),)
    )
    planner = Planner(graph, *[profile_model(graph, feeds, options, calls=True)] * 2)
    link = Link(1e6, 0.0)  # a bit a microsecond: each ms is 125 bytes
    requests = 5
    with LinkEmulator(*parse_address(server.target)) as proxy, SplitClient(proxy.address) as client:
        for cut in manifest.cuts:
            predicted = planner.predict(cut.id, "raw", link)
            if cut.tail is None or predicted is None:
                continue
            split = StaticSplit(directory, client, cut=cut.id, codec=CodecSpec.parse("raw"))
            split.infer(feeds)  # a connection's first call sends its headers in full
            before = dict(proxy.carried)
            for _ in range(requests):
                split.infer(feeds)
            up = (proxy.carried["up"] - before["up"]) / requests
            down = (proxy.carried["down"] - before["down"]) / requests
            # within the names of the model and the cut, and a frame header per 16 kB
            assert up == pytest.approx(predicted.transfer_ms * 125, rel=1e-3, abs=40), cut.id
            assert down == pytest.approx(predicted.return_ms * 125, rel=1e-3, abs=40), cut.id


def _big_model(width: int):
    b = Builder("big")
    x = b.input("x", ["N", width])
    b.output(b.op("Neg", [b.op("Relu", [x])]))
    return b.model()


def test_a_tensor_larger_than_one_message_streams_in_chunks(tmp_path, serve):
    width = 1 << 18  # 1 MiB per sample
    model = _big_model(width)
    graph = ModelGraph.load(model)
    write_artifacts(graph, enumerate_cuts(graph), tmp_path)
    limits = HostLimits(max_message_bytes=1 << 20)
    server = serve(TailHost([tmp_path], limits=limits, session_options=EXACT))
    x = np.random.default_rng(0).standard_normal((3, width)).astype(np.float32)
    tensors = [encode(x, name="x")]
    expected = run(model, {"x": x})
    with SplitClient(server.target) as client:
        with pytest.raises(OverloadedError, match="larger than max"):
            client.infer("big", "cloud", tensors)  # 3 MiB in one message
        replies = list(client.infer_stream([("big", "cloud", tensors)] * 5, chunk_bytes=256 << 10))
        # told the server's limit, the client sends such a request in chunks by itself
        client.max_request_bytes = limits.max_message_bytes
        replies.append(client.infer("big", "cloud", tensors))
        replies.append(client.start_infer("big", "cloud", tensors).result(timeout=30))
    assert len(replies) == 7
    for reply in replies:
        assert not isinstance(reply, Exception)
        np.testing.assert_array_equal(
            next(iter(reply.outputs.values())), next(iter(expected.values()))
        )


def _good(client, directory):
    manifest = load_manifest(directory)
    feeds = example_feeds(manifest.inputs, batch=2)
    cut = manifest.cut("c3")
    sent, _ = CutRunner(directory, manifest, cut).run_head(feeds)
    return manifest, cut, [encode(v, name=k) for k, v in sent.items()]


def _bad_requests(directory):
    """(name, change to the good request, expected error class, words in the message)."""
    manifest = load_manifest(directory)
    cut = manifest.cut("c3")
    first = cut.tensors[0].name

    def retensor(tensors, **change):
        return [dataclasses.replace(tensors[0], **change), *tensors[1:]]

    bomb = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(1 << 22))

    def corrupted(ts):
        return retensor(ts, codec=Codec.ZSTD, payload=b"\x28\xb5\x2f\xfd" + b"\xff" * 40)

    return {
        "unknown model": ("nope", "c3", None, NotFoundError, "no model 'nope'"),
        "unknown cut": (None, "c999", None, NotFoundError, "no cut 'c999'"),
        "edge-only cut": (None, "edge", lambda ts: [], NotFoundError, "entirely on the device"),
        "wrong tensor name": (
            None,
            None,
            lambda ts: retensor(ts, name="zzz"),
            InvalidInputError,
            "unexpected tensor 'zzz'",
        ),
        "missing tensor": (
            None,
            None,
            lambda ts: ts[1:],
            InvalidInputError,
            f"missing tensor '{first}'",
        ),
        "duplicate tensor": (
            None,
            None,
            lambda ts: [ts[0], *ts],
            InvalidInputError,
            "appears twice",
        ),
        "wrong dtype": (
            None,
            None,
            lambda ts: retensor(ts, dtype="float64"),
            InvalidInputError,
            "expected dtype float32, received float64",
        ),
        "wrong rank": (
            None,
            None,
            lambda ts: retensor(ts, shape=ts[0].shape[1:]),
            InvalidInputError,
            "expected rank 4",
        ),
        "wrong shape": (
            None,
            None,
            lambda ts: retensor(ts, shape=(2, 9, 16, 16)),
            InvalidInputError,
            "mismatch on dim=1",
        ),
        "inconsistent batch": (
            None,
            None,
            lambda ts: retensor(ts, shape=(5, *ts[0].shape[1:])),
            InvalidInputError,
            "dimension 'N' is",
        ),
        "negative dimension": (
            None,
            None,
            lambda ts: retensor(ts, shape=(-2, *ts[0].shape[1:])),
            InvalidInputError,
            "negative",
        ),
        "oversized shape": (
            None,
            None,
            lambda ts: retensor(ts, shape=(1 << 40, *ts[0].shape[1:])),
            InvalidInputError,
            "more than this server's limit",
        ),
        "payload size mismatch": (
            None,
            None,
            lambda ts: retensor(ts, payload=ts[0].payload[:-4]),
            InvalidInputError,
            "raw payload has",
        ),
        "corrupted payload": (None, None, corrupted, InvalidInputError, "corrupted zstd payload"),
        "truncated payload": (
            None,
            None,
            lambda ts: retensor(
                ts,
                codec=Codec.ZSTD,
                payload=zstandard.ZstdCompressor().compress(ts[0].payload)[:-9],
            ),
            InvalidInputError,
            "zstd",
        ),
        "decompression bomb": (
            None,
            None,
            lambda ts: retensor(ts, codec=Codec.ZSTD, payload=bomb),
            InvalidInputError,
            "frame claims 4194304 bytes",
        ),
        "bad quantization": (
            None,
            None,
            lambda ts: retensor(ts, codec=Codec.INT8_ZSTD, scale=(1.0, 2.0), zero_point=(0,)),
            InvalidInputError,
            "scale",
        ),
    }


BAD = [
    "unknown model",
    "unknown cut",
    "edge-only cut",
    "wrong tensor name",
    "missing tensor",
    "duplicate tensor",
    "wrong dtype",
    "wrong rank",
    "wrong shape",
    "inconsistent batch",
    "negative dimension",
    "oversized shape",
    "payload size mismatch",
    "corrupted payload",
    "truncated payload",
    "decompression bomb",
    "bad quantization",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_its_status_and_the_server_keeps_serving(
    case, resnet_artifacts, host, serve
):
    directory, _ = resnet_artifacts
    server = serve(host)
    model, cut_id, change, error, words = _bad_requests(directory)[case]
    with SplitClient(server.target) as client:
        manifest, cut, tensors = _good(client, directory)
        bad = change(tensors) if change else tensors
        with pytest.raises(error) as info:
            client.infer(model or manifest.model, cut_id or cut.id, bad)
        assert words in str(info.value)
        code = {
            NotFoundError: grpc.StatusCode.NOT_FOUND,
            InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
        }[error]
        assert info.value.__cause__.code() == code
        reply = client.infer(manifest.model, cut.id, tensors)  # still serving
        assert reply.outputs


def test_unknown_codec_and_lossy_response_codec_are_invalid_argument(resnet_artifacts, host, serve):
    directory, _ = resnet_artifacts
    server = serve(host)
    with SplitClient(server.target) as client:
        manifest, cut, tensors = _good(client, directory)
        request = pb.InferRequest(model=manifest.model, cut=cut.id)
        from runtime.protocol import tensor_to_proto

        request.tensors.extend(tensor_to_proto(t) for t in tensors)
        request.tensors[0].codec = "lz4"
        with pytest.raises(grpc.RpcError) as info:
            client.stub.Infer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown codec 'lz4'" in (info.value.details() or "")
        with pytest.raises(InvalidInputError, match="sent losslessly"):
            client.infer(manifest.model, cut.id, tensors, response_codec="int8+zstd")
        with pytest.raises(InvalidInputError, match="over the limit"):
            client.probe(0, 1 << 30)
        assert client.infer(manifest.model, cut.id, tensors).outputs


class GatedHost(TailHost):
    """A TailHost whose runs wait for a gate and are counted: the test decides when
    a tail finishes, and sees which requests were computed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.computed: list[str] = []

    def compute(self, model, cut_id, feeds):
        self.gate.wait(timeout=30)
        self.computed.append(cut_id)
        return super().compute(model, cut_id, feeds)


def test_an_expired_deadline_is_not_computed(resnet_artifacts, serve):
    directory, _ = resnet_artifacts
    host = GatedHost([directory], limits=HostLimits(max_concurrent=1, max_queued=4))
    server = serve(host)
    with SplitClient(server.target) as client, ThreadPoolExecutor(2) as pool:
        manifest, cut, tensors = _good(client, directory)
        first = pool.submit(client.infer, manifest.model, cut.id, tensors, timeout=30)
        time.sleep(0.2)  # let it take the only worker
        with pytest.raises(DeadlineError):
            client.infer(manifest.model, cut.id, tensors, timeout=0.3)
        host.gate.set()
        assert first.result().outputs
    time.sleep(0.2)
    assert host.computed == [cut.id], "the expired request never ran"


def test_beyond_the_queue_bound_requests_are_refused_at_once(resnet_artifacts, serve):
    directory, _ = resnet_artifacts
    host = GatedHost([directory], limits=HostLimits(max_concurrent=1, max_queued=1))
    server = serve(host, batching=BatchOptions(dynamic=False))  # a batch would hold them all
    with SplitClient(server.target) as client, ThreadPoolExecutor(4) as pool:
        manifest, cut, tensors = _good(client, directory)
        waiting = [
            pool.submit(client.infer, manifest.model, cut.id, tensors, timeout=30) for _ in range(2)
        ]
        time.sleep(0.3)
        start = time.perf_counter()
        with pytest.raises(OverloadedError, match="at capacity"):
            client.infer(manifest.model, cut.id, tensors, timeout=30)
        assert time.perf_counter() - start < 2
        host.gate.set()
        assert all(f.result().outputs for f in waiting)


class FaultyHost(TailHost):
    def compute(self, model, cut_id, feeds):
        if cut_id == "c7":
            raise RuntimeError("secret internal detail")
        return super().compute(model, cut_id, feeds)


def test_an_unexpected_error_is_internal_without_the_details(resnet_artifacts, serve, caplog):
    directory, _ = resnet_artifacts
    server = serve(FaultyHost([directory]))
    with SplitClient(server.target) as client:
        manifest = load_manifest(directory)
        feeds = example_feeds(manifest.inputs, batch=1)
        runner = CutRunner(directory, manifest, manifest.cut("c7"))
        sent, _ = runner.run_head(feeds)
        with pytest.raises(RemoteError) as info:
            client.infer(manifest.model, "c7", [encode(v, name=k) for k, v in sent.items()])
        assert info.value.code == "INTERNAL" and "secret" not in str(info.value)
        _, cut, tensors = _good(client, directory)
        assert client.infer(manifest.model, cut.id, tensors).outputs


def test_one_stream_carries_many_requests_and_survives_a_bad_one(resnet_artifacts, host, serve):
    directory, _ = resnet_artifacts
    server = serve(host)
    with SplitClient(server.target) as client:
        manifest, cut, tensors = _good(client, directory)
        requests = [(manifest.model, cut.id, tensors)] * 3 + [(manifest.model, "c999", tensors)]
        requests += [(manifest.model, cut.id, tensors)] * 3
        answers = list(client.infer_stream(requests, chunk_bytes=1000))
    errors = [a for a in answers if isinstance(a, Exception)]
    assert len(answers) == 7 and len(errors) == 1 and isinstance(errors[0], NotFoundError)


def test_describe_lists_models_cuts_and_codecs(resnet_artifacts, host, serve):
    directory, _ = resnet_artifacts
    server = serve(host)
    manifest = load_manifest(directory)
    with SplitClient(server.target) as client:
        (info,) = client.describe().models
        assert info.name == manifest.model and info.sha256 == manifest.sha256
        assert [c.id for c in info.cuts] == [c.id for c in manifest.cuts]
        edge = next(c for c in info.cuts if c.id == "edge")
        assert not edge.served and all(c.served for c in info.cuts if c.id != "edge")
        assert set(info.codecs) == {
            "raw",
            "zstd",
            "fp16+zstd",
            "int8+zstd",
            "delta+zstd",
            "delta+int8+zstd",
        }
        assert info.inputs[0].shape[0] == -1 and info.inputs[0].dim_names[0] == "N"
        with pytest.raises(NotFoundError):
            client.describe("nope")
        rtt, server_ms = client.probe(1 << 16, 1 << 16)
        assert rtt > server_ms >= 0


def test_a_stream_answers_each_request_while_it_is_still_open(resnet_artifacts, host, serve):
    directory, _ = resnet_artifacts
    server = serve(host)
    with SplitClient(server.target) as client:
        manifest, cut, tensors = _good(client, directory)
        outbox: queue.Queue = queue.Queue()

        def requests():
            while (item := outbox.get()) is not None:
                yield item

        responses = client.stub.InferStream(requests(), timeout=30)
        for index in range(3):
            for message in stream_messages(manifest.model, cut.id, tensors, f"r{index}", 1 << 20):
                outbox.put(message)
            answer = next(responses)  # before the client has closed its side
            assert answer.response.request_id == f"r{index}"
        outbox.put(None)
        assert list(responses) == []


class CountingHost(TailHost):
    """Slow tails that count how many run at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def compute(self, model, cut_id, feeds):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.4)
        with self.lock:
            self.running -= 1
        return super().compute(model, cut_id, feeds)


def test_cancelled_calls_keep_their_slot_until_their_tail_ends(resnet_artifacts, serve):
    directory, _ = resnet_artifacts
    host = CountingHost([directory], limits=HostLimits(max_concurrent=1, max_queued=16))
    server = serve(host)
    with SplitClient(server.target) as client:
        manifest, cut, tensors = _good(client, directory)
        first = client.start_infer(manifest.model, cut.id, tensors, timeout=30)
        time.sleep(0.1)
        first.cancel()  # the caller gives up; its tail, already running, goes on
        after = [client.start_infer(manifest.model, cut.id, tensors, timeout=30) for _ in range(3)]
        assert all(call.result(timeout=30).outputs for call in after)
    assert host.most == 1
