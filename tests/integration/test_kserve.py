"""The KServe v2 endpoint, called with the stock tritonclient (sync and asyncio, unary
and streaming, with and without compression); its answers equal the tail run here."""

from __future__ import annotations

import asyncio
import queue
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import json_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc
from tritonclient.utils import InferenceServerException

from partitioner import ModelGraph, write_artifacts
from partitioner.cuts import cut_from_tensors
from runtime.cloud.kserve import tail_signature
from runtime.cloud.server import Security
from runtime.cloud.tails import TailHost
from runtime.engine import SessionOptions, make_session, run_session
from tests.graphs import write_adaptive_artifacts

EXACT = SessionOptions(optimize=False)
COMPRESSIONS = [None, "gzip", "deflate"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("kserve")
    h = write_adaptive_artifacts(directory)
    return directory, h


@pytest.fixture
def server(artifacts, serve):
    return serve(TailHost([artifacts[0]], session_options=EXACT))


def _x(rows=2, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, 16384)).astype(np.float32)


def _expected(directory, cut, feeds):
    """The tail run here, in process, on the same inputs."""
    return run_session(make_session(directory / "cuts" / cut / "tail.onnx", EXACT), feeds)


def _input(name, array):
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_sync_infer_equals_the_tail(artifacts, server, compression):
    directory, _ = artifacts
    x = _x()
    with triton.InferenceServerClient(server.target) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("adaptive__cloud")
        result = client.infer(
            "adaptive__cloud", [_input("x", x)], request_id="r1", compression_algorithm=compression
        )
    expected = _expected(directory, "cloud", {"x": x})
    (name, value), *_ = expected.items()
    assert result.get_response().id == "r1"
    assert np.array_equal(result.as_numpy(name), value)


def test_the_mid_cut_takes_the_hidden_tensor_and_requested_outputs_are_honoured(artifacts, server):
    directory, h = artifacts
    _inputs, outputs = tail_signature(directory / "cuts" / "mid" / "tail.onnx")
    hidden = np.abs(_x(3)[:, :64])
    with triton.InferenceServerClient(server.target) as client:
        result = client.infer(
            "adaptive__mid",
            [_input(h, hidden)],
            outputs=[triton.InferRequestedOutput(outputs[0].name)],
        )
    expected = _expected(directory, "mid", {h: hidden})
    assert np.array_equal(result.as_numpy(outputs[0].name), expected[outputs[0].name])


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_asyncio_infer_and_stream_equal_the_tail(artifacts, server, compression):
    directory, _ = artifacts
    xs = [_x(1, seed) for seed in range(5)]

    async def main():
        async with triton_aio.InferenceServerClient(server.target) as client:
            single = await client.infer(
                "adaptive__cloud", [_input("x", xs[0])], compression_algorithm=compression
            )

            async def requests():
                for index, x in enumerate(xs):
                    yield {
                        "model_name": "adaptive__cloud",
                        "inputs": [_input("x", x)],
                        "request_id": str(index),
                    }

            answers = {}
            stream = client.stream_infer(requests(), compression_algorithm=compression)
            async for result, error in stream:
                assert error is None, error
                answers[result.get_response().id] = result
                if len(answers) == len(xs):
                    break
            return single, answers

    single, answers = asyncio.run(main())
    name = next(iter(_expected(directory, "cloud", {"x": xs[0]})))
    assert np.array_equal(single.as_numpy(name), _expected(directory, "cloud", {"x": xs[0]})[name])
    for index, x in enumerate(xs):
        expected = _expected(directory, "cloud", {"x": x})[name]
        assert np.array_equal(answers[str(index)].as_numpy(name), expected)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_sync_stream_answers_every_request_and_survives_a_bad_one(artifacts, server, compression):
    directory, _ = artifacts
    results: queue.Queue = queue.Queue()
    xs = [_x(1, seed) for seed in range(4)]
    with triton.InferenceServerClient(server.target) as client:
        client.start_stream(
            callback=lambda result, error: results.put((result, error)),
            stream_timeout=30,
            compression_algorithm=compression,
        )
        client.async_stream_infer("adaptive__cloud", [_input("x", xs[0])], request_id="0")
        client.async_stream_infer("no_such_model", [_input("x", xs[0])], request_id="bad")
        for index, x in enumerate(xs[1:], 1):
            client.async_stream_infer("adaptive__cloud", [_input("x", x)], request_id=str(index))
        got = [results.get(timeout=30) for _ in range(len(xs) + 1)]
        client.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "no_such_model" in str(errors[0]), errors
    answers = {r.get_response().id: r for r, e in got if e is None}
    name = next(iter(_expected(directory, "cloud", {"x": xs[0]})))
    for index, x in enumerate(xs):
        expected = _expected(directory, "cloud", {"x": x})[name]
        assert np.array_equal(answers[str(index)].as_numpy(name), expected)


def test_metadata_config_and_index_describe_each_tail(artifacts, server):
    directory, _h = artifacts
    with triton.InferenceServerClient(server.target) as client:
        index = client.get_model_repository_index()
        names = sorted(m.name for m in index.models)
        assert names == ["adaptive__cloud", "adaptive__mid"]
        assert {m.state for m in index.models} == {"READY"} and {
            m.version for m in index.models
        } == {"1"}
        for name in names:
            cut = name.split("__")[1]
            inputs, outputs = tail_signature(directory / "cuts" / cut / "tail.onnx")
            metadata = client.get_model_metadata(name)
            assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
                (p.name, "FP32", list(p.dims)) for p in inputs
            ]
            assert [t.name for t in metadata.outputs] == [p.name for p in outputs]
            config = client.get_model_config(name).config
            # the bound on samples per request, dims without the batch; an exact server
            # runs each request alone: no dynamic batching
            assert config.max_batch_size == 32
            assert [(i.name, list(i.dims)) for i in config.input] == [
                (p.name, list(p.dims[1:])) for p in inputs
            ]
            assert not config.HasField("dynamic_batching")
            assert config.input[0].data_type == mc.TYPE_FP32
        assert client.get_server_metadata().name == "splitinfer"
        assert not client.is_model_ready("adaptive__cloud", model_version="7")
        assert not client.is_model_ready("nothing")


def _stub(target):
    channel = grpc.insecure_channel(target)
    return channel, kpb_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (kpb.ModelInferRequest(model_name="nothing"), grpc.StatusCode.NOT_FOUND),
        (
            kpb.ModelInferRequest(model_name="adaptive__cloud", model_version="2"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (kpb.ModelInferRequest(model_name="adaptive__cloud"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            kpb.ModelInferRequest(
                model_name="adaptive__cloud",
                inputs=[
                    kpb.ModelInferRequest.InferInputTensor(
                        name="x", datatype="FP32", shape=[1, 16384]
                    )
                ],
                raw_input_contents=[b"\0" * 100],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            kpb.ModelInferRequest(
                model_name="adaptive__cloud",
                inputs=[
                    kpb.ModelInferRequest.InferInputTensor(name="x", datatype="BYTES", shape=[1])
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            kpb.ModelInferRequest(
                model_name="adaptive__cloud",
                inputs=[
                    kpb.ModelInferRequest.InferInputTensor(
                        name="x", datatype="FP32", shape=[1 << 40, 16384]
                    )
                ],
                raw_input_contents=[b""],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            kpb.ModelInferRequest(
                model_name="adaptive__cloud",
                inputs=[
                    kpb.ModelInferRequest.InferInputTensor(name="y", datatype="FP32", shape=[1, 4])
                ],
                raw_input_contents=[b"\0" * 16],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=["unknown-model", "unknown-version", "no-inputs", "short-payload", "bytes", "huge", "name"],
)
def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    server, artifacts, request_, code
):
    channel, stub = _stub(server.target)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request_, timeout=10)
        assert caught.value.code() == code, caught.value.details()
        with pytest.raises(grpc.RpcError) as garbage:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                b"\xff\xff\xff", timeout=10
            )
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelStatistics(kpb.ModelStatisticsRequest(name="nope"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with triton.InferenceServerClient(server.target) as client:
        assert (
            client.infer("adaptive__cloud", [_input("x", _x(1))]).as_numpy("matmul11") is not None
        )


def test_typed_contents_work_like_raw_ones(artifacts, server):
    directory, _ = artifacts
    x = _x(1)
    tensor = kpb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 16384])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    channel, stub = _stub(server.target)
    with channel:
        reply = stub.ModelInfer(
            kpb.ModelInferRequest(model_name="adaptive__cloud", inputs=[tensor]), timeout=10
        )
    out = reply.outputs[0]
    got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(out.shape)
    assert np.array_equal(got, _expected(directory, "cloud", {"x": x})[out.name])


def test_the_token_guards_kserve_too_but_not_liveness(artifacts, serve):
    server = serve(TailHost([artifacts[0]], session_options=EXACT), Security(token="s3cret"))
    with triton.InferenceServerClient(server.target) as client:
        assert client.is_server_live()
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.infer("adaptive__cloud", [_input("x", _x(1))])
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.get_model_repository_index()
        result = client.infer(
            "adaptive__cloud", [_input("x", _x(1))], headers={"authorization": "Bearer s3cret"}
        )
        assert result.as_numpy("matmul11").shape == (1, 10)


def test_a_batching_servers_config_has_the_batch_dimension_out_and_round_trips(artifacts, serve):
    directory, _ = artifacts
    server = serve(TailHost([directory]))  # optimized: it batches
    inputs, _ = tail_signature(directory / "cuts" / "cloud" / "tail.onnx")
    with triton.InferenceServerClient(server.target) as client:
        config = client.get_model_config("adaptive__cloud").config
    assert config.max_batch_size == 32  # the tails keep the symbolic batch
    assert [list(i.dims) for i in config.input] == [list(p.dims[1:]) for p in inputs]
    again = json_format.ParseDict(json_format.MessageToDict(config), mc.ModelConfig())
    assert again == config and again.dynamic_batching.max_queue_delay_microseconds > 0


def _tile_artifacts(directory):
    """A model whose answer (256 KiB) is 4096 times its input, split to run in the cloud."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 65536])
    repeats = numpy_helper.from_array(np.array([1, 4096], np.int64), "repeats")
    node = helper.make_node("Tile", ["x", "repeats"], ["y"])
    graph = helper.make_graph([node], "tile", [x], [y], [repeats])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = ModelGraph.load(model)
    write_artifacts(loaded, [cut_from_tensors(loaded, ["x"], cut_id="cloud")], directory)


def _answered(server):
    return sum(
        sample.value
        for family in server.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "splitinfer_requests_total"
    )


def test_a_stream_whose_answers_are_not_read_holds_the_server_up_not_its_memory(tmp_path, serve):
    _tile_artifacts(tmp_path)
    server = serve(TailHost([tmp_path], session_options=EXACT))
    request = kpb.ModelInferRequest(
        model_name="tile__cloud",
        inputs=[kpb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 16])],
        raw_input_contents=[np.ones((1, 16), np.float32).tobytes()],
    )
    sent = 1000  # 64 KiB of requests for 256 MiB of answers
    channel, stub = _stub(server.target)
    with channel:
        answers = stub.ModelStreamInfer(iter([request] * sent), timeout=60)
        time.sleep(3)  # the client reads nothing: the server answers only what it can send
        held = _answered(server)
        received = [answer for answer in answers]
    assert held < 300, held  # a queue and the running requests, both bounded, and the window
    # every request answered: exactly, or (on a loaded machine, the server at capacity
    # with this stream's own requests) refused at once, as unary calls are
    assert len(received) == sent
    expected = np.ones((1, 65536), np.float32).tobytes()
    for answer in received:
        if answer.error_message:
            assert answer.error_message.startswith("RESOURCE_EXHAUSTED"), answer.error_message
        else:
            assert answer.infer_response.raw_output_contents[0] == expected
