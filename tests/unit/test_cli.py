"""The splitinfer command line: tables, JSON, split directories, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from partitioner.cli import main
from runtime.artifacts import load_manifest
from tests.graphs import FAMILIES, assert_recomposes


@pytest.fixture
def resnet_file(tmp_path):
    path = tmp_path / "resnet.onnx"
    onnx.save_model(FAMILIES["resnet"](), str(path))
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cuts_prints_a_table_with_every_cut(resnet_file, capsys):
    code, out, _ = _run(capsys, "cuts", resnet_file)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "head", "nodes"]
    assert lines[1].startswith("cloud") and lines[-1].startswith("edge")
    assert "image float32[Nx3x16x16]" in lines[1]


def test_cuts_json_lists_id_tensors_bytes_and_head_nodes(resnet_file, capsys):
    code, out, _ = _run(capsys, "cuts", resnet_file, "--json")
    assert code == 0
    cuts = json.loads(out)
    assert {"id", "tensors", "bytes", "head_nodes"} <= set(cuts[0])
    assert cuts[0]["id"] == "cloud" and cuts[0]["tensors"] == ["image"]
    assert cuts[0]["bytes"] == 3 * 16 * 16 * 4
    assert [c["head_nodes"] for c in cuts] == sorted(c["head_nodes"] for c in cuts)
    code, out, _ = _run(capsys, "cuts", resnet_file, "--json", "--max-tensors", "1")
    assert all(len(c["tensors"]) <= 1 for c in json.loads(out))


def test_split_by_id_and_by_tensors_writes_a_manifest(resnet_file, tmp_path, capsys):
    _, out, _ = _run(capsys, "cuts", resnet_file, "--json")
    cuts = json.loads(out)
    middle = cuts[len(cuts) // 2]
    two = next(c for c in cuts if len(c["tensors"]) == 2)
    out_dir = tmp_path / "art"
    code, _, err = _run(
        capsys,
        "split",
        resnet_file,
        "--cut",
        middle["id"],
        "--cut",
        ",".join(two["tensors"]),
        "--cut",
        "edge",
        "--out",
        out_dir,
    )
    assert code == 0, err
    raw = json.loads((out_dir / "manifest.json").read_text())
    assert raw["full"] == "model.onnx"
    assert [c["id"] for c in raw["cuts"]] == [middle["id"], two["id"], "edge"]
    assert raw["cuts"][1]["tensors"] == two["tensors"]
    assert {"id", "tensors", "head", "tail"} <= set(raw["cuts"][0])
    assert_recomposes(FAMILIES["resnet"](), out_dir, load_manifest(out_dir))


def _bad_inputs(tmp_path, resnet_file):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    return {
        "missing file": (["cuts", tmp_path / "missing.onnx"], "no such file"),
        "not onnx": (["cuts", text], "not an ONNX model"),
        "unknown cut id": (
            ["split", resnet_file, "--cut", "c999", "--out", tmp_path / "o"],
            "no cut 'c999'",
        ),
        "unknown tensor": (
            ["split", resnet_file, "--cut", "nope,relu2", "--out", tmp_path / "o"],
            "no tensor named 'nope'",
        ),
        "non-separating": (
            ["split", resnet_file, "--cut", _branch_only(resnet_file), "--out", tmp_path / "o"],
            "do not separate",
        ),
        "bad flag": (["cuts", resnet_file, "--frobnicate"], "unrecognized arguments"),
    }


def _branch_only(resnet_file):
    from partitioner import ModelGraph, enumerate_cuts

    graph = ModelGraph.load(resnet_file)
    return next(c for c in enumerate_cuts(graph) if len(c.tensors) == 2).tensor_names[1]


@pytest.mark.parametrize(
    "case",
    ["missing file", "not onnx", "unknown cut id", "unknown tensor", "non-separating", "bad flag"],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(case, tmp_path, resnet_file, capsys):
    argv, expected = _bad_inputs(tmp_path, resnet_file)[case]
    try:
        code: int | str | None = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("splitinfer")
    assert expected in err
    assert "Traceback" not in err


def test_the_console_entry_point_never_prints_a_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    result = subprocess.run(
        [sys.executable, "-m", "partitioner.cli", "cuts", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
