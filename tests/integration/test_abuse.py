"""The server against hostile and careless clients: one test per attack, each on a
real ``splitinfer serve`` process, with raw bytes (and raw HTTP/2 for clients that
never read). Memory is the server's resident set, read from outside with no forced
garbage collection; what a good client sees is measured by a separate process.

Time bounds carry a margin a busy 2-core CI machine holds (the benchmark,
``python -m bench.abuse``, reports the real figures against a 50 ms goal); each
is far below what the server took before these defences (seconds)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kpb

from bench import attacks
from bench.attacks import MiB, Target, Watch
from runtime import fastwire
from runtime.cloud.kserve import MODEL_INFER_REQUEST, _typed_values
from runtime.codec import Codec, Encoded

HEALTH_MARGIN_MS = 250.0  # a health check's longest wait during a parse or decode attack
RSS_SLACK = 64 * MiB  # what the server may keep after an attack (allocator, arenas)
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return attacks.small_cnn(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN)
    return path


@pytest.fixture
def target(workload):
    with Target([workload.directory]) as server:
        yield server


def _good_client_fine(seen, *, health_ms=HEALTH_MARGIN_MS):
    assert seen.health_ms and seen.health_max_ms < health_ms, seen.health_max_ms
    assert seen.codes.get("OK", 0) > 0 and set(seen.codes) == {"OK"}, seen.codes


def test_rejected_requests_give_their_bytes_back(workload, token_file):
    with Target([workload.directory], ["--token-file", str(token_file)], token=TOKEN) as server:
        before = server.settle(0.5)
        watch = Watch(server.address, workload.infer_bytes(), token=TOKEN)
        refused = attacks.unauthenticated_bodies(server.address, count=40)
        invalid = attacks.invalid_bodies(server.address, workload, rounds=4, token=TOKEN)
        too_big = attacks.unauthenticated_bodies(server.address, count=4, size=100 * MiB)
        seen = watch.stop()
        after = server.settle()
    assert refused.codes == {"UNAUTHENTICATED": 40}
    assert invalid.codes == {"NOT_FOUND": 32}
    assert too_big.codes == {"RESOURCE_EXHAUSTED": 4}  # gRPC refuses it before reading it
    assert after - before < RSS_SLACK, (before, after)  # 232 MiB came and went
    _good_client_fine(seen)


def test_samples_per_request_are_bounded_by_the_tails_max_batch_size(workload, target):
    watch = Watch(target.address, workload.infer_bytes())
    outcome = attacks.batch_amplification(target.address, workload)
    seen = watch.stop()
    # beyond 32 samples: refused on both protocols before anything is decoded; the
    # 4096-sample KServe request is refused by its size alone (raw, 48 MiB)
    assert outcome.codes == {"INVALID_ARGUMENT": 9, "RESOURCE_EXHAUSTED": 1, "OK": 8}
    assert outcome.notes["request_bytes"] < 1000  # 32 samples in a few hundred bytes
    code, answer = attacks.raw_call(
        target.address,
        attacks.MODEL_CONFIG,
        kpb.ModelConfigRequest(name="small_cnn__cloud").SerializeToString(),
    )
    config = kpb.ModelConfigResponse.FromString(answer).config
    assert code == "OK" and config.max_batch_size == 32  # the bound that was enforced
    _good_client_fine(seen)


def test_probes_are_held_to_the_memory_budget(workload):
    with Target([workload.directory], ["--max-memory", "128", "--metrics-port", "0"]) as server:
        before = server.settle(0.5)
        watch = Watch(server.address, workload.infer_bytes())
        with attacks.PeakRSS(server) as peak:
            outcome = attacks.probe_flood(server.address, count=64, size=4 * MiB)
            held = server.metric("splitinfer_memory_held_bytes")
            refusals = server.metric("splitinfer_memory_refusals")
            attacks.close_all(outcome)
        seen = watch.stop()
        after = server.settle()
    assert held <= 128 * MiB and refusals > 0  # 64 x 8 MiB asked; what fits is held
    assert peak.peak - before < 128 * MiB + RSS_SLACK, (before, peak.peak)
    assert after - before < RSS_SLACK, (before, after)
    _good_client_fine(seen)


def test_a_message_made_of_one_group_is_refused_at_once(workload, target):
    watch = Watch(target.address, workload.infer_bytes())
    start = time.perf_counter()
    outcome = attacks.group_messages(target.address)
    took = time.perf_counter() - start
    seen = watch.stop()
    # every method refuses it as malformed; the stream answers it and ends normally
    assert outcome.codes == {"INVALID_ARGUMENT": 6, "stream 3": 1}, outcome.codes
    assert took < 5.0  # 7 messages of 4 MiB each; walked group by group it was 2 s each
    _good_client_fine(seen)


def test_typed_contents_are_converted_off_the_event_loop(workload, target):
    watch = Watch(target.address, workload.infer_bytes())
    outcome = attacks.typed_contents(target.address, workload)
    seen = watch.stop()
    # the values that fit the shape are answered; the count that does not, and
    # integers for a float input, are refused
    assert outcome.codes == {"OK": 1, "INVALID_ARGUMENT": 2}, outcome.codes
    _good_client_fine(seen)


def test_typed_contents_read_as_protobuf_reads_them():
    rng = np.random.default_rng(0)
    cases = [
        ("INT32", "int32", "int_contents", rng.integers(-(2**31), 2**31 - 1, 1000)),
        ("INT64", "int64", "int64_contents", rng.integers(-(2**62), 2**62, 1000)),
        ("UINT8", "uint8", "uint_contents", rng.integers(0, 255, 1000)),
        ("BOOL", "bool", "bool_contents", rng.integers(0, 2, 1000).astype(bool)),
        ("FP64", "float64", "fp64_contents", rng.standard_normal(1000)),
    ]
    for datatype, dtype, field, values in cases:
        request = kpb.ModelInferRequest()
        tensor = request.inputs.add(name="x", datatype=datatype, shape=[1000])
        getattr(tensor.contents, field).extend(values.tolist())
        parts = fastwire.parse(request.SerializeToString(), MODEL_INFER_REQUEST)
        contents = parts.nested[5][0].nested[5][0]
        encoded = Encoded(Codec.RAW, dtype, (1000,), b"", name="x")
        got = np.frombuffer(_typed_values(contents, datatype, encoded), dtype=dtype)
        np.testing.assert_array_equal(got, values.astype(dtype), err_msg=datatype)


def test_a_stream_header_is_checked_before_any_chunk_is_kept(workload, target):
    before = target.settle(0.5)
    with attacks.PeakRSS(target) as peak:
        outcome = attacks.stream_header_lie(target.address, chunks=256, streams=2)
    # a 1 GiB tensor for a model that is not there: refused once, its 256 MiB of
    # chunks dropped as they come
    assert outcome.codes == {"NOT_FOUND": 2}
    assert outcome.notes["answers_per_stream"] == [1, 1]
    assert peak.peak - before < RSS_SLACK, (before, peak.peak)


def test_streams_that_never_read_hold_the_server_to_its_bounds(workload):
    with Target([workload.directory], ["--max-memory", "128"]) as server:
        before = server.settle(0.5)
        watch = Watch(server.address, workload.infer_bytes())
        with attacks.PeakRSS(server) as peak:
            outcome = attacks.unread_streams(server.address, workload, count=50)
            attacks.close_all(outcome)
        seen = watch.stop()
        after = server.settle()
    assert peak.peak - before < 128 * MiB + RSS_SLACK, (before, peak.peak)
    assert after - before < RSS_SLACK, (before, after)
    # single calls find room however many streams are open and stuck
    _good_client_fine(seen)


def test_one_bad_message_on_a_stream_is_answered_and_the_rest_too(workload, target):
    outcome = attacks.malformed_in_stream(target.address, workload)
    assert outcome.codes == {"OK": 1}
    assert sorted(outcome.notes["answers"]) == ["a", "b", "c", "error INVALID_ARGUMENT"]


def test_sigterm_stops_a_long_tail_within_the_grace(tmp_path):
    slow = attacks.slow_mlp(tmp_path / "slow")
    server = Target([slow.directory], ["--grace", "1"])
    try:
        code: list[str] = []
        call = threading.Thread(
            target=lambda: code.append(
                attacks.raw_call(server.address, attacks.INFER, slow.infer_bytes())[0]
            )
        )
        call.start()
        time.sleep(1.5)  # the tail is running (it takes several seconds)
        start = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        stopped = time.perf_counter() - start
        call.join(timeout=30)
    finally:
        server.stop()
    assert stopped < 1 + 1.0, stopped  # the grace, then the running tail is stopped
    assert code and code[0] in ("UNAVAILABLE", "CANCELLED"), code


def test_rapid_reset_does_not_reach_other_connections(workload, target):
    watch = Watch(target.address, workload.infer_bytes())
    outcome = attacks.rapid_reset(target.address, streams=20_000)
    seen = watch.stop()
    assert outcome.codes["RESET"] > 0
    _good_client_fine(seen)  # no CANCELLED on another connection


def test_error_messages_echo_at_most_a_prefix_of_a_name(target):
    named = attacks.long_name(target.address, length=60_000)
    assert named.codes == {"NOT_FOUND": 1} and named.notes["details_bytes"] < 1024
    huge = attacks.long_name(target.address, length=1 << 20)
    assert huge.codes == {"INVALID_ARGUMENT": 1} and huge.notes["details_bytes"] < 1024


def test_two_authorization_values_are_unauthenticated(workload, token_file):
    with Target([workload.directory], ["--token-file", str(token_file)], token=TOKEN) as server:
        outcome = attacks.duplicate_tokens(server.address, TOKEN)
    # wrong-then-right and right-then-wrong are both refused; the token alone works
    assert outcome.codes == {"UNAUTHENTICATED": 2, "NOT_FOUND": 1}


def test_metrics_listen_on_loopback_and_need_the_token(workload, token_file):
    options = ["--host", "0.0.0.0", "--token-file", str(token_file), "--metrics-port", "0"]
    with Target([workload.directory], options, token=TOKEN) as server:
        assert server.metrics_url and server.metrics_url.startswith("http://127.0.0.1:")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.metrics_url, timeout=10)
        assert refused.value.code == 401
        assert server.metric("splitinfer_memory_budget_bytes") == 1024 * MiB
    with Target([workload.directory], [*options, "--metrics-open"]) as server:
        assert server.metrics_url is not None
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        assert "splitinfer_memory_held_bytes" in text


def _serve(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "partitioner.cli", "serve", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_busy_or_impossible_address_is_one_line_and_exit_2(workload, target):
    cases = {
        ("--port", str(target.port)): "in use",
        ("--port", "70000"): "between 0 and 65535",
        ("--host", "no-such-host.invalid", "--port", "0"): "does not resolve",
        ("--host", "192.0.2.1", "--port", "0"): "not one of this machine's",
        ("--port", "0", "--metrics-port", str(target.port)): "in use",
    }
    for arguments, words in cases.items():
        result = _serve(str(workload.directory), *arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert words in result.stderr, (arguments, result.stderr)
    # and the server that has the port still answers every request
    code, _ = attacks.raw_call(target.address, attacks.INFER, workload.infer_bytes())
    assert code == "OK"
