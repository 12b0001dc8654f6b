"""What a newcomer meets: every bad input is one line on stderr and exit status 2 (no
traceback, no "internal error"), on every command; and the few things that must
work the first time (--version, timings that add up, the link emulator surviving
typos, a wheel without the benchmarks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

from partitioner import ModelGraph, cut_from_tensors, write_artifacts
from partitioner.cli import main
from partitioner.cuts import resolve_cut
from runtime.cloud.tails import TailHost
from runtime.device.adaptive import EdgeOptions, EdgeRuntime
from runtime.device.client import SplitClient
from runtime.device.edge import StaticSplit
from tests.graphs import FAMILIES, write_adaptive_artifacts

NETS = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
    def forward(self, x):
        return self.linear(x)
def build():
    return Net()
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model, its artifacts (cloud and a middle cut), a profile, inputs good and bad."""
    root = tmp_path_factory.mktemp("cli")
    model = FAMILIES["chain_cnn"]()
    onnx.save_model(model, str(root / "model.onnx"))
    graph = ModelGraph.load(model)
    write_artifacts(graph, [cut_from_tensors(graph, ["image"], cut_id="cloud")], root / "art")
    edge_only = root / "edge_only"
    write_artifacts(graph, [resolve_cut(graph, "edge")], edge_only)
    good = np.zeros((1, 3, 16, 16), np.float32)
    np.save(root / "good.npy", good)
    np.save(root / "rank.npy", good[0])
    np.save(root / "dims.npy", np.zeros((1, 3, 8, 8), np.float32))
    np.save(root / "dtype.npy", good.astype(np.float64))
    np.savez(root / "both.npz", image=good)
    (root / "text.npy").write_text("0 1 2\n")
    (root / "calib").mkdir()
    np.save(root / "calib" / "image.npy", np.zeros((2, 3, 8, 8), np.float32))
    (root / "profile.json").write_text(json.dumps({"format": 1, "kind": "profile"}))
    (root / "nets.py").write_text(NETS)
    return root


def _bad(capfd, argv):
    code = main([str(a) for a in argv])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines


CASES = {
    "input of the wrong rank": (
        "infer {root}/art --target 127.0.0.1:1 --cut cloud --input image={root}/rank.npy",
        "expected rank 4",
    ),
    "input of the wrong dims": (
        "infer {root}/art --target 127.0.0.1:1 --input image={root}/dims.npy --adaptive",
        "dimension 2 must be 16",
    ),
    "input of the wrong dtype": (
        "infer {root}/art --target 127.0.0.1:1 --input image={root}/dtype.npy",
        "expected float32, received float64",
    ),
    "an .npz for an input": (
        "infer {root}/art --target 127.0.0.1:1 --input image={root}/both.npz",
        "both.npz is an .npz archive",
    ),
    "a text file as .npy": (
        "infer {root}/art --target 127.0.0.1:1 --input image={root}/text.npy",
        "text.npy is not a .npy file",
    ),
    "an input the model does not have": (
        "infer {root}/art --target 127.0.0.1:1 --input nope={root}/good.npy",
        "unknown input 'nope'",
    ),
    "a target without a port": (
        "infer {root}/art --target 127.0.0.1 --input image={root}/good.npy",
        "expected HOST:PORT",
    ),
    "a target port out of range": (
        "infer {root}/art --target 127.0.0.1:99999 --input image={root}/good.npy",
        "from 0 to 65535",
    ),
    "a zero timeout": (
        "infer {root}/art --target 127.0.0.1:1 --timeout 0 --input image={root}/good.npy",
        "--timeout must be a positive",
    ),
    "a negative timeout": (
        "infer {root}/art --target 127.0.0.1:1 --timeout -1 --input image={root}/good.npy",
        "--timeout must be a positive",
    ),
    "an unknown cut": (
        "infer {root}/art --target 127.0.0.1:1 --cut c999 --input image={root}/good.npy",
        "c999",
    ),
    "a JSON file as the model": ("cuts {root}/profile.json", "is JSON"),
    "a negative rate": (
        "plan {root}/model.onnx --edge {root}/p.json --cloud {root}/p.json --uplink=-5mbit",
        "cannot be negative",
    ),
    "a rate without a unit": (
        "plan {root}/model.onnx --edge {root}/p.json --cloud {root}/p.json --uplink 10",
        "a unit is needed",
    ),
    "a duration without a unit": (
        "plan {root}/model.onnx --edge {root}/p.json --cloud {root}/p.json --rtt 40",
        "a unit is needed",
    ),
    "no cloud workers": (
        "plan {root}/model.onnx --edge {root}/p.json --cloud {root}/p.json "
        "--objective throughput --cloud-workers 0",
        "--cloud-workers must be between 1 and 65536",
    ),
    "cloud workers for a latency plan": (
        "plan {root}/model.onnx --edge {root}/p.json --cloud {root}/p.json --cloud-workers 4",
        "changes only a throughput plan",
    ),
    "calibration data of the wrong shape": (
        "profile {root}/model.onnx --out {root}/x.json --calib {root}/calib",
        "calib/image.npy has 8 on dimension 2",
    ),
    "a port out of range": ("serve {root}/art --port 70000", "between 0 and 65535"),
    "an execution provider that is not here": (
        "serve {root}/art --port 0 --providers cuda,cpu",
        "'cuda' is not available in this ONNX Runtime; available here:",
    ),
    "a provider's device id that is not a number": (
        "profile {root}/model.onnx --out {root}/x.json --providers cpu:first",
        "expected a number, like cuda:1",
    ),
    "a directory with no tails": ("serve {root}/edge_only --port 0", "nothing to serve"),
    "two shapes for a one-input module": (
        "export {root}/nets.py:build --input-shape 1x4 --input-shape 1x6 --out {root}/n.onnx",
        "takes 2 positional arguments",
    ),
    "a module input of the wrong rank": (
        "export {root}/nets.py:build --input-shape 1x3x5 --out {root}/n.onnx",
        "does not run on 1 input(s) of shape 1x3x5",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, files, capfd):
    command, words = CASES[case]
    code, lines = _bad(capfd, command.format(root=files).split())
    assert code == 2, (case, lines)
    assert len(lines) == 1, (case, lines)
    assert lines[0].startswith("splitinfer") and "internal error" not in lines[0]
    assert "Traceback" not in lines[0] and "\x1b[" not in lines[0]
    assert words in lines[0], (case, lines[0])


def test_a_busy_port_is_one_line_and_exit_2(files, capfd):
    with socket.socket() as holder:  # another program holds the port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, lines = _bad(capfd, ["serve", files / "art", "--port", port])
    assert code == 2 and len(lines) == 1 and "in use" in lines[0], lines


def test_version_and_help_with_defaults(capfd):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capfd.readouterr().out.startswith("splitinfer 0.")
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capfd.readouterr().out
    for default in ("(default: 127.0.0.1)", "(default: 50051)", "(default: 32)"):
        assert default in " ".join(text.split()), default


def test_every_option_says_what_it_is_for():
    import argparse

    from partitioner.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    silent = [
        f"{name} {action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not silent, silent


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    directory = tmp_path_factory.mktemp("adaptive")
    write_adaptive_artifacts(directory)
    return directory


def _feeds():
    return {"x": np.random.default_rng(0).standard_normal((1, 16384)).astype(np.float32)}


def test_timing_parts_add_up_to_the_total_on_every_path(adaptive, serve):
    server = serve(TailHost([adaptive]))
    parts = ("head_ms", "encode_ms", "network_ms", "server_ms", "decode_ms")
    # a trial split cut short on a busy machine falls back: its own parts add up too
    local_parts = {"local": ("local_ms", "choose_ms"), "fallback": ("local_ms", "split_ms")}
    with SplitClient(server.target) as client:
        split = StaticSplit(adaptive, client, cut="cloud")
        for _ in range(5):
            timing = split.infer(_feeds()).timing
            assert abs(sum(timing[p] for p in parts) - timing["total_ms"]) < 0.5, timing
            assert timing["network_ms"] > 0, timing
    options = EdgeOptions(deadline_ms=2000, slowdown=20.0, uplink_bps=1e9, rtt_ms=1.0)
    with EdgeRuntime(adaptive, SplitClient(server.target), options) as runtime:
        seen = set()
        for _ in range(10):
            result = runtime.infer(_feeds())
            timing = result.timing
            rest = {"split": parts, **local_parts}[result.path]
            seen.add(result.path)
            assert abs(sum(timing[p] for p in rest) - timing["total_ms"]) < 0.5, timing
    server.stop()  # now the cloud is gone: fallbacks and local runs add up too
    with EdgeRuntime(adaptive, SplitClient(server.target), options) as runtime:
        for _ in range(3):
            result = runtime.infer(_feeds())
            rest = local_parts[result.path]
            assert abs(sum(result.timing[p] for p in rest) - result.timing["total_ms"]) < 0.5


def test_the_link_emulator_survives_bad_commands_and_quits(adaptive, serve):
    server = serve(TailHost([adaptive]))
    emulator = subprocess.Popen(
        [sys.executable, "-m", "partitioner.cli", "linkem", "--target", server.target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    commands = "set up=banana\ncut sideways\nfly\nset up=2mbit delay=5ms\nrestore\nquit\n"
    out, err = emulator.communicate(commands, timeout=30)
    assert emulator.returncode == 0, err
    assert out.splitlines()[0].startswith("listening on 127.0.0.1:")
    assert out.splitlines()[1:] == ["ok set up=2mbit delay=5ms", "ok restore"]
    errors = err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors), err
    assert "Traceback" not in err
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "partitioner.cli",
            "linkem",
            "--target",
            server.target,
            "--up",
            "fast",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_a_wheel_of_the_repository_holds_no_bench_package(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("splitinfer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("runtime/device/linkem.py") for n in names)
    assert not any(n.startswith("bench/") for n in names), [n for n in names if "bench" in n]
