"""Serving features around the tails: dynamic batching, Prometheus metrics, a Triton
model repository, and the edge runtime against a server that speaks only KServe v2."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from runtime.cloud.batching import BatchOptions
from runtime.cloud.kserve import tail_signature
from runtime.cloud.tails import TailHost
from runtime.codec import encode
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.kserve_client import KServeClient
from runtime.engine import SessionOptions, make_session, run_session
from runtime.errors import NotFoundError, RemoteError
from tests.graphs import write_adaptive_artifacts

EXACT = SessionOptions(optimize=False)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serving")
    return directory, write_adaptive_artifacts(directory)


def _x(rows=1, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, 16384)).astype(np.float32)


def _concurrently(count, call):
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def run(index):
        barrier.wait()
        results[index] = call(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _batch_sizes(metrics, protocol_model="adaptive", cut="cloud"):
    """The batch-size histogram's (count, sum) for one tail."""
    samples = {
        s.name: s.value
        for family in metrics.registry.collect()
        if family.name == "splitinfer_batch_size"
        for s in family.samples
        if s.labels.get("model") == protocol_model and s.labels.get("cut") == cut
    }
    return samples.get("splitinfer_batch_size_count", 0), samples.get(
        "splitinfer_batch_size_sum", 0
    )


def test_concurrent_requests_run_as_batches_whose_answers_match_unbatched_ones(artifacts, serve):
    directory, _ = artifacts
    # a slow batch window makes the stacking certain on a busy 2-core machine
    batched = serve(TailHost([directory]), batching=BatchOptions(max_batch=32, max_delay_ms=50))
    alone = serve(TailHost([directory]), batching=BatchOptions(dynamic=False))
    xs = [_x(1, seed) for seed in range(16)]

    def ask(server):
        def call(index):
            with SplitClient(server.target) as client:
                reply = client.infer("adaptive", "cloud", [encode(xs[index], name="x")], timeout=30)
            return next(iter(reply.outputs.values()))

        return call

    with_batching = _concurrently(len(xs), ask(batched))
    without = _concurrently(len(xs), ask(alone))
    count, total = _batch_sizes(batched.metrics)
    assert total == len(xs) and count < len(xs), (count, total)  # fewer runs than requests
    assert _batch_sizes(alone.metrics) == (len(xs), len(xs))
    for got, expected in zip(with_batching, without, strict=True):
        # the same tail, stacked: ONNX Runtime's GEMM differs from its GEMV in the last bits
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_requests_that_cannot_stack_run_apart_and_an_exact_host_never_batches(artifacts, serve):
    directory, _ = artifacts
    server = serve(TailHost([directory]), batching=BatchOptions(max_batch=4, max_delay_ms=50))
    rows = [1, 3, 2, 4, 1, 2]  # at most 4 samples per run

    def call(index):
        with SplitClient(server.target) as client:
            x = _x(rows[index], index)
            reply = client.infer("adaptive", "cloud", [encode(x, name="x")], timeout=30)
        return next(iter(reply.outputs.values())).shape

    shapes = _concurrently(len(rows), call)
    assert [s[0] for s in shapes] == rows
    runs = [
        s
        for family in server.metrics.registry.collect()
        if family.name == "splitinfer_batch_size"
        for s in family.samples
        if s.name == "splitinfer_batch_size_bucket" and s.labels["le"] == "4.0"
    ]
    count, total = _batch_sizes(server.metrics)
    assert total == sum(rows) and runs[0].value == count  # no run above 4 samples
    exact = serve(TailHost([directory], session_options=EXACT))
    _concurrently(
        4,
        lambda i: SplitClient(exact.target).infer(
            "adaptive", "cloud", [encode(_x(1, i), name="x")], timeout=30
        ),
    )
    assert _batch_sizes(exact.metrics) == (4, 4)


def test_the_metrics_endpoint_reports_the_requests_made(artifacts, serve):
    directory, _ = artifacts
    server = serve(TailHost([directory], session_options=EXACT))
    http, port = server.metrics.serve("127.0.0.1", 0)
    try:
        with SplitClient(server.target) as client:
            for seed in range(3):
                client.infer("adaptive", "cloud", [encode(_x(1, seed), name="x")])
            with pytest.raises(NotFoundError):
                client.infer("adaptive", "nope", [encode(_x(1), name="x")])
        with triton.InferenceServerClient(server.target) as client:
            x = triton.InferInput("x", [1, 16384], "FP32")
            x.set_data_from_numpy(_x(1))
            client.infer("adaptive__cloud", [x])
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
    finally:
        http.shutdown()

    def value(pattern):
        match = re.search(pattern + r" (\S+)", text)
        assert match, pattern
        return float(match.group(1))

    ok = 'model="adaptive",protocol="splitinfer",status="OK"'
    assert value(r'splitinfer_requests_total\{codec="raw",cut="cloud",' + ok + r"\}") == 3
    assert (
        value(
            r'splitinfer_requests_total\{codec="raw",cut="cloud",model="adaptive",protocol="kserve",status="OK"\}'
        )
        == 1
    )
    unknown = (
        r'splitinfer_requests_total\{codec="_unknown",cut="_unknown",model="_unknown",'
        r'protocol="splitinfer",status="NOT_FOUND"\}'
    )
    assert value(unknown) == 1
    assert (
        value(
            r'splitinfer_request_seconds_count\{cut="cloud",model="adaptive",protocol="splitinfer"\}'
        )
        == 3
    )
    assert (
        value(r'splitinfer_received_bytes_total\{cut="cloud",model="adaptive",protocol="kserve"\}')
        == 16384 * 4
    )
    assert value(r'splitinfer_batch_size_count\{cut="cloud",model="adaptive"\}') == 4
    assert value(r'splitinfer_in_flight_requests\{protocol="splitinfer"\}') == 0


def test_the_edge_runtime_splits_against_a_server_speaking_only_kserve(artifacts, serve):
    directory, _ = artifacts
    server = serve(TailHost([directory], session_options=EXACT), protocols=["kserve"])
    with SplitClient(server.target) as native, pytest.raises(Exception, match="UNIMPLEMENTED"):
        native.infer("adaptive", "cloud", [encode(_x(1), name="x")], timeout=10)
    reference = make_session(directory / "model.onnx", EXACT)
    # a device slow enough that splitting clearly pays: the test is about the protocol
    options = EdgeOptions(deadline_ms=2000, slowdown=200.0, exact=True, codec="auto")
    with EdgeRuntime(directory, KServeClient(server.target), options) as runtime:
        results = [runtime.infer({"x": _x(1, seed)}) for seed in range(8)]
        breaker = runtime.breaker.snapshot()
    assert [r.path for r in results].count("split") >= 6, [(r.path, r.cut) for r in results]
    assert {r.codec for r in results if r.path == "split"} == {"raw"}
    for seed, result in enumerate(results):
        expected = run_session(reference, {"x": _x(1, seed)})
        for name, value in expected.items():
            assert np.array_equal(result.outputs[name], value)
    assert breaker["state"] == "closed"


def test_export_triton_writes_a_repository_whose_configs_match_the_tails(artifacts, tmp_path):
    directory, _ = artifacts
    repo = tmp_path / "repo"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "partitioner.cli",
            "export-triton",
            str(directory),
            "--out",
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["adaptive__cloud", "adaptive__mid"]
    for name in names:
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
        model = repo / name / "1" / "model.onnx"
        onnx.checker.check_model(str(model))
        inputs, outputs = tail_signature(model)
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert (
            config.max_batch_size == 32
            and config.dynamic_batching.max_queue_delay_microseconds == 2000
        )
        assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
            (p.name, "TYPE_FP32", list(p.dims[1:])) for p in inputs
        ]
        assert [(o.name, list(o.dims)) for o in config.output] == [
            (p.name, list(p.dims[1:])) for p in outputs
        ]
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_export_triton_puts_external_data_in_a_model_directory(tmp_path):
    from partitioner import ModelGraph, cut_from_tensors, write_artifacts
    from partitioner.triton import export_triton
    from tests.graphs import adaptive_model

    model, h = adaptive_model()
    graph = ModelGraph.load(model)
    cuts = [cut_from_tensors(graph, [h], cut_id="mid")]
    write_artifacts(graph, cuts, tmp_path / "art", external_data_threshold=1024)
    names = export_triton(tmp_path / "art", tmp_path / "repo")
    version = tmp_path / "repo" / names[0] / "1"
    assert (version / "model.onnx").is_dir()
    data = [p.name for p in (version / "model.onnx").iterdir()]
    assert "model.onnx" in data and len(data) >= 2, data
    session = make_session(version / "model.onnx" / "model.onnx", EXACT)
    hidden = np.abs(_x(2)[:, :64])
    original = make_session(tmp_path / "art" / "cuts" / "mid" / "tail.onnx", EXACT)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            run_session(session, {h: hidden}).values(),
            run_session(original, {h: hidden}).values(),
            strict=True,
        )
    )


def test_export_triton_of_a_bad_directory_is_one_line_and_exit_2(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "partitioner.cli",
            "export-triton",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr


def _gather_artifacts(directory):
    """y = GatherElements(x, idx, axis=1): an index out of range fails the run."""
    from onnx import TensorProto, helper

    from partitioner import ModelGraph, cut_from_tensors, write_artifacts

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    node = helper.make_node("GatherElements", ["x", "idx"], ["y"], axis=1)
    graph = helper.make_graph([node], "gather", [x, idx], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = ModelGraph.load(model)
    write_artifacts(loaded, [cut_from_tensors(loaded, ["x", "idx"], cut_id="cloud")], directory)


def test_a_request_that_breaks_its_batch_fails_alone(tmp_path, serve):
    _gather_artifacts(tmp_path)
    server = serve(TailHost([tmp_path]), batching=BatchOptions(max_batch=32, max_delay_ms=50))
    x = np.arange(4, dtype=np.float32).reshape(1, 4)

    def call(index):
        position = np.array([[index % 4 if index != 3 else 99]], dtype=np.int64)
        with SplitClient(server.target) as client:
            try:
                tensors = [encode(x, name="x"), encode(position, name="idx")]
                reply = client.infer("gather", "cloud", tensors, timeout=30)
            except RemoteError as exc:
                return exc.code
            return float(reply.outputs["y"][0, 0])

    answers = _concurrently(8, call)
    assert answers[3] == "INTERNAL", answers
    assert [a for i, a in enumerate(answers) if i != 3] == [i % 4 for i in range(8) if i != 3]
    count, total = _batch_sizes(server.metrics, "gather")
    assert total >= 7, (count, total)  # the others ran, stacked or alone
